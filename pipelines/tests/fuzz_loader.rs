//! A bounded fuzz harness of the pipeline-file loader: the example pipelines mutated line by
//! line and value by value (lines dropped, repeated, re-indented; values swapped for odd
//! durations, SQL fragments, deep nesting, unterminated `${VAR`, unicode; bytes flipped and
//! cut) must load into a plan or be refused with an error, never panic.
//!
//! `cargo test -p weir-pipelines --test fuzz_loader` runs a few hundred cases; `WEIR_FUZZ_CASES`
//! and `WEIR_FUZZ_SEED` set the count and the seed, and `scripts/fuzz.sh` runs it for hours
//! with fresh seeds. A failing case prints its seed and its file: add it to `REGRESSIONS`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Pipeline files that once failed, checked on every run.
const REGRESSIONS: &[&str] = &[
    "name: x\nsources: { s: { file: { path: data/sample-events.ndjson }, schema: data-ingestion } }\nwindows: { w: { from: s, key: [datasetName], tumbling: 0s, aggregates: { n: count(*) } } }\n",
    "name: x\nsources: { s: { file: { path: data/sample-events.ndjson }, schema: data-ingestion, event_time: { field: timestamp, max_future: 99999999999999999d } } }\n",
    "name: x\nsources: { s: { file: { path: data/sample-events.ndjson }, schema: data-ingestion } }\nviews: { v: { from: s, key: [datasetName], where: \"100 / recordCount > 0\", aggregates: { n: \"sum(sizeBytes * sizeBytes)\" } } }\n",
];

const VALUES: &[&str] = &[
    "0s",
    "-5s",
    "1.5m",
    "99999999999999999999d",
    "18446744073709551615ms",
    "\"\"",
    "[]",
    "{}",
    "~",
    "null",
    "\"${UNSET_VAR}\"",
    "\"${UNSET_VAR:-}\"",
    "\"${UNCLOSED\"",
    "\"sum(\"",
    "\"count(*) FILTER (WHERE\"",
    "\"1/0\"",
    "\"recordCount / 0 > 1\"",
    "\"CAST(status AS BIGINT)\"",
    "\"((((((((((((((((((((((((((((((((((((((((1))))))))))))))))))))))))))))))))))))))))\"",
    "\"sum(DISTINCT sizeBytes) FILTER (WHERE status = 'x')\"",
    "\"approx_percentile_cont(sizeBytes, 2.5)\"",
    "\"last_value(status ORDER BY nope)\"",
    "ünïcödé",
    "&anchor value",
    "*alias",
    "!!binary aGVsbG8=",
    "'single ''quoted'''",
    "[a, [b, [c, [d]]]]",
    "9223372036854775808",
    "-1",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    let i = rng.below(n);
    match rng.below(7) {
        0 => {
            lines.remove(i);
        }
        1 => {
            let l = lines[i].clone();
            lines.insert(rng.below(n), l);
        }
        2 => {
            let indent = " ".repeat(rng.below(9));
            let l = lines[i].trim_start().to_string();
            lines[i] = format!("{indent}{l}");
        }
        3 | 4 => {
            // a value swapped: after the first ': ' of the line, or an element of a flow map
            let v = VALUES[rng.below(VALUES.len())];
            let l = &lines[i];
            if let Some(p) = l.find(": ") {
                let end = l[p + 2..].find([',', '}']).map_or(l.len(), |e| p + 2 + e);
                lines[i] = format!("{}{v}{}", &l[..p + 2], &l[end..]);
            } else {
                lines[i] = format!("{l} {v}");
            }
        }
        5 => {
            let l = &mut lines[i];
            let cut = rng.below(l.len() + 1);
            while !l.is_char_boundary(cut.min(l.len())) {
                l.pop();
            }
            l.truncate(cut.min(l.len()));
        }
        _ => {
            let keys = [
                "max_future: 1h",
                "idle_timeout: 0s",
                "allowed_lateness: 1d",
                "time: processing",
                "retain: 1ms",
                "partitioned_by: [datasetName]",
                "where: \"status = 1\"",
                "unknown_key: 1",
            ];
            let indent: String = lines[i].chars().take_while(|c| *c == ' ').collect();
            lines.insert(i, format!("{indent}{}", keys[rng.below(keys.len())]));
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// A folder of its own under the system's temporary folder, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("weir-fuzz-loader-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Loads `text` as a pipeline file in `dir`: a plan (true) or an error (false), never a panic.
fn check(dir: &Path, text: &str) -> Result<bool, String> {
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, text).unwrap();
    catch_unwind(AssertUnwindSafe(|| weir_pipelines::load(&path)))
        .map(|r| r.is_ok())
        .map_err(|p| format!("panicked: {p:?}"))
}

#[test]
fn the_loader_never_panics_on_mutated_pipeline_files() {
    let cases: usize = std::env::var("WEIR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("WEIR_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x10ad_e222);
    eprintln!("fuzz_loader: {cases} cases, seed {seed} (WEIR_FUZZ_SEED to repeat)");
    let dir = TempDir::new();
    // the examples' relative paths (data/…) resolve as they do beside the examples
    std::os::unix::fs::symlink(examples().join("data"), dir.path().join("data")).unwrap();
    let seeds: Vec<String> = ["quickstart", "generator", "kafka", "lakehouse", "live"]
        .iter()
        .map(|n| std::fs::read_to_string(examples().join(format!("{n}.yaml"))).unwrap())
        .collect();
    for r in REGRESSIONS {
        check(dir.path(), r).unwrap();
    }
    let mut rng = Rng(seed | 1);
    let mut loaded = 0;
    for case in 0..cases {
        let mut text = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            text = mutate(&mut rng, &text);
        }
        match check(dir.path(), &text) {
            Ok(ok) => loaded += usize::from(ok),
            Err(e) => panic!("case {case} (seed {seed}): {e}\nfile:\n{text}"),
        }
    }
    eprintln!("fuzz_loader: {loaded} of {cases} mutated files loaded, the others refused");
    // mutations small enough that many files still load: the checks after parsing are fuzzed too
    assert!(loaded * 20 >= cases, "{loaded} of {cases} loaded");
}
