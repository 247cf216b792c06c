//! The house rules that a grep can check: outside `pipelines/src/connectors/`, no planning,
//! running or replay code names a connector kind. Each system's planning, opening, replay
//! and pool behaviour lives in its folder there, behind the registry's traits
//! (`pipelines/src/connectors/mod.rs`); a new connector is a folder, a registry line and
//! the field of its key in the YAML model (`model.rs`), which names the block's type by its
//! path into the folder and defines no connector's type.
//!
//! What counts as naming a kind, in code (comments and string literals removed first, and
//! `#[cfg(test)]` items skipped: tests write pipelines that name kinds):
//! - a path into a connector's crate or module: `weir_kafka`, `weir_nats`, `weir_iceberg`,
//!   `weir_sinks`, `weir_sources::file` (`::generator`), `connectors::kafka::`...
//!   or any `kafka::`, `nats::`... path;
//! - an identifier containing a kind's name (`KafkaSourceConfig`, `nats_stream`,
//!   `.kafka`, `OffsetRange`-like types of one system listed in [`KIND_TYPES`]);
//! - a string literal naming two kinds or more: a message listing kinds by hand (build it
//!   from the registry's flags instead, as `keys_of` and `format_refusal` do).
//!
//! Known blind spot: the `file` kind's name is an everyday word (`plan.file` is the
//! pipeline's path), so only its types are matched ([`KIND_TYPES`]), not `.file` or `file`.

use std::path::{Path, PathBuf};

/// Words that name a kind inside an identifier (matched case-insensitively).
const KIND_WORDS: &[&str] = &[
    "kafka",
    "nats",
    "iceberg",
    "postgres",
    "webhook",
    "elasticsearch",
    "generator",
];

/// Types of one system whose names do not say which (matched as whole identifiers).
const KIND_TYPES: &[&str] = &[
    "FileTarget",
    "FileInput",
    "FileDeadLetter",
    "FileSink",
    "FileReader",
    "FileFormat",
    "DeadLetterFile",
    "CommittedFileSink",
    "CommittedDeadLetterFile",
    "resolve_files",
    "OffsetRange",
    "ReadOffsets",
    "RepartitionSpec",
    "RepartitionStage",
    "StartFrom",
    "ClaimedStart",
    "Upstream",
    "PoolHook",
    "EsAuth",
    "IndexTemplate",
    "TlsMode",
    "offset_ranges",
    "partition_counts",
];

/// Paths into a connector's crate or module (matched at an identifier boundary).
const KIND_PATHS: &[&str] = &[
    "weir_kafka",
    "weir_nats",
    "weir_iceberg",
    "weir_sinks",
    "weir_sources::file",
    "weir_sources::generator",
    "file::",
];

/// Names of kinds as messages spell them (a string naming two is a hand-made list).
const KIND_NAMES: &[&str] = &[
    "kafka",
    "nats",
    "iceberg",
    "postgres",
    "elasticsearch",
    "webhook",
    "generator",
];

/// Where a connector name is allowed outside the connectors, and why: a file, and the text
/// of the line allowed (the whole file when empty).
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "model.rs",
        "pub postgres: Option<String>",
        "`serve.postgres`",
    ),
    (
        "lib.rs",
        "connectors::iceberg::compact",
        "`weir compact` re-exported",
    ),
    (
        "plan/mod.rs",
        "connectors::iceberg::",
        "the Iceberg target re-exported",
    ),
    (
        "plan/mod.rs",
        "connectors::webhook::",
        "the webhook target re-exported",
    ),
    (
        "plan/mod.rs",
        "DEFAULT_KAFKA_IDLE_TIMEOUT_MS",
        "a public default, re-exported",
    ),
    (
        "plan/sinks.rs",
        "connectors::file::FileDeadLetter",
        "the default dead-letter file",
    ),
    // `serve.postgres`: the address of the Postgres wire protocol, not the sink
    ("plan/mod.rs", "pub postgres:", "`serve.postgres`"),
    ("plan/settings.rs", "d.postgres", "`serve.postgres`"),
    ("plan/describe.rs", "sv.postgres", "`serve.postgres`"),
    ("run.rs", "sv.postgres", "`serve.postgres`"),
    // JSON Schema generation (schemars' "generator"), not the generator source
    ("schema.rs", "generator", "schemars' schema generator"),
    (
        "model.rs",
        "schemars::SchemaGenerator",
        "schemars' schema generator",
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Rust source split into code (comments and literal contents blanked to spaces, newlines
/// kept so lines stay numbered) and its string literals with their line numbers.
struct Lexed {
    code: String,
    strings: Vec<(usize, String)>,
}

/// Separates `text`'s code from its comments (line, doc and nested block comments) and its
/// string, byte-string, raw-string and char literals.
fn lex(text: &str) -> Lexed {
    let c: Vec<char> = text.chars().collect();
    let mut code = String::with_capacity(text.len());
    let mut strings = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(i + k).copied().unwrap_or('\0');
        let ident_before = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if at(0) == '/' && at(1) == '/' {
            let end = (i..c.len()).find(|&k| c[k] == '\n').unwrap_or(c.len());
            blank(&mut code, &mut line, &c[i..end]);
            i = end;
        } else if at(0) == '/' && at(1) == '*' {
            let (mut depth, mut k) = (0usize, i);
            while k < c.len() {
                if c[k] == '/' && c.get(k + 1) == Some(&'*') {
                    depth += 1;
                    k += 2;
                } else if c[k] == '*' && c.get(k + 1) == Some(&'/') {
                    depth -= 1;
                    k += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    k += 1;
                }
            }
            blank(&mut code, &mut line, &c[i..k.min(c.len())]);
            i = k;
        } else if !ident_before && (at(0) == 'r' || (at(0) == 'b' && at(1) == 'r')) && {
            let h = if at(0) == 'r' { 1 } else { 2 };
            let hashes = (i + h..c.len()).take_while(|&k| c[k] == '#').count();
            c.get(i + h + hashes) == Some(&'"')
        } {
            let h = if at(0) == 'r' { 1 } else { 2 };
            let hashes = (i + h..c.len()).take_while(|&k| c[k] == '#').count();
            let open = i + h + hashes + 1;
            let close: String = std::iter::once('"')
                .chain("#".repeat(hashes).chars())
                .collect();
            let close: Vec<char> = close.chars().collect();
            let end = (open..c.len())
                .find(|&k| c[k..].starts_with(&close))
                .unwrap_or(c.len());
            strings.push((line, c[open..end].iter().collect()));
            code.extend(&c[i..open]);
            blank(&mut code, &mut line, &c[open..end]);
            let stop = (end + close.len()).min(c.len());
            code.extend(&c[end..stop]);
            i = stop;
        } else if at(0) == '"' || (!ident_before && at(0) == 'b' && at(1) == '"') {
            let open = if at(0) == '"' { i + 1 } else { i + 2 };
            let mut k = open;
            while k < c.len() && c[k] != '"' {
                k += if c[k] == '\\' { 2 } else { 1 };
            }
            let end = k.min(c.len());
            strings.push((line, c[open..end].iter().collect()));
            code.extend(&c[i..open]);
            blank(&mut code, &mut line, &c[open..end]);
            if end < c.len() {
                code.push('"');
            }
            i = end + 1;
        } else if at(0) == '\'' && (at(1) == '\\' || (at(1) != '\0' && at(2) == '\'')) {
            // a char literal (`'x'`, `'\n'`, `'\''`); otherwise a lifetime or label
            let mut k = i + 1;
            while k < c.len() && c[k] != '\'' {
                k += if c[k] == '\\' { 2 } else { 1 };
            }
            code.push('\'');
            blank(&mut code, &mut line, &c[i + 1..k.min(c.len())]);
            code.push('\'');
            i = k + 1;
        } else {
            if at(0) == '\n' {
                line += 1;
            }
            code.push(at(0));
            i += 1;
        }
    }
    Lexed { code, strings }
}

/// `code` with every `#[cfg(test)]` item blanked (tests write pipelines naming kinds), and
/// the line ranges blanked.
fn without_tests(code: &str) -> (String, Vec<(usize, usize)>) {
    const MARK: &str = "#[cfg(test)]";
    let mark: Vec<char> = MARK.chars().collect();
    let mut out: Vec<char> = code.chars().collect();
    let mut skipped = Vec::new();
    let mut start = 0;
    while let Some(at) = (start..out.len()).find(|&k| out[k..].starts_with(&mark)) {
        // the item ends at its `;` or at the brace closing its first `{`
        let mut depth = 0usize;
        let mut k = at + mark.len();
        while k < out.len() {
            match out[k] {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                ';' if depth == 0 => break,
                _ => {}
            }
            k += 1;
        }
        let end = (k + 1).min(out.len());
        let line_of = |n: usize| out[..n].iter().filter(|&&ch| ch == '\n').count() + 1;
        skipped.push((line_of(at), line_of(end)));
        for ch in &mut out[at..end] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        start = end;
    }
    (out.into_iter().collect(), skipped)
}

/// `s` blanked into `code`, newlines kept (and counted in `line`).
fn blank(code: &mut String, line: &mut usize, s: &[char]) {
    for &ch in s {
        if ch == '\n' {
            *line += 1;
            code.push('\n');
        } else {
            code.push(' ');
        }
    }
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// Every occurrence of `pattern` in `line` that starts and ends at an identifier boundary
/// (a pattern ending in `::` needs no boundary after it).
fn occurs(line: &str, pattern: &str) -> bool {
    line.match_indices(pattern).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + pattern.len()..].chars().next();
        !before.is_some_and(is_ident) && (pattern.ends_with("::") || !after.is_some_and(is_ident))
    })
}

/// What names a connector kind in one line of code.
fn kind_names(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for ident in code
        .split(|ch: char| !is_ident(ch))
        .filter(|w| !w.is_empty())
    {
        let lower = ident.to_lowercase();
        if KIND_WORDS.iter().any(|w| lower.contains(w)) || KIND_TYPES.contains(&ident) {
            found.push(ident.to_string());
        }
    }
    for pattern in KIND_PATHS {
        if occurs(code, pattern) {
            found.push(pattern.to_string());
        }
    }
    for word in KIND_WORDS {
        let path = format!("{word}::");
        if occurs(code, &path) {
            found.push(path);
        }
    }
    found
}

/// Whether `line` of `rel` may name a connector: an allowed file whose entry is empty (the
/// whole file) or appears in the line.
fn allowed(rel: &str, line: &str) -> bool {
    ALLOWED
        .iter()
        .any(|(file, what, _why)| rel == *file && (what.is_empty() || line.contains(what)))
}

/// Every place in `text` (file `rel` under `pipelines/src`) that names a connector kind.
fn violations(rel: &str, text: &str) -> Vec<String> {
    let lexed = lex(text);
    let (code, skipped) = without_tests(&lexed.code);
    let mut found = Vec::new();
    let original: Vec<&str> = text.lines().collect();
    for (n, line) in code.lines().enumerate() {
        let names = kind_names(line);
        if !names.is_empty() && !allowed(rel, line) {
            let shown = original.get(n).map_or("", |l| l.trim());
            found.push(format!(
                "pipelines/src/{rel}:{}: {} ({})",
                n + 1,
                shown,
                names.join(", ")
            ));
        }
    }
    for (n, s) in &lexed.strings {
        if skipped.iter().any(|(a, b)| (a..=b).contains(&n)) {
            continue;
        }
        let lower = s.to_lowercase();
        let named: Vec<&str> = KIND_NAMES
            .iter()
            .copied()
            .filter(|k| lower.contains(k))
            .collect();
        if named.len() >= 2 && !allowed(rel, s) {
            found.push(format!(
                "pipelines/src/{rel}:{n}: a message listing kinds by hand ({}): \"{s}\"",
                named.join(", ")
            ));
        }
    }
    found
}

#[test]
fn no_connector_kind_is_named_outside_the_connectors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut found = Vec::new();
    let mut checked = 0;
    for f in files {
        let rel = f
            .strip_prefix(&root)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        if rel.starts_with("connectors/") {
            continue;
        }
        checked += 1;
        let text = std::fs::read_to_string(&f).expect("read source");
        found.extend(violations(&rel, &text));
    }
    assert!(checked >= 10, "only {checked} files checked: wrong folder?");
    assert!(
        found.is_empty(),
        "connector kinds named outside pipelines/src/connectors/ (move the code into the \
         connector's folder behind the registry's traits):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_guard_sees_through_comments_strings_and_tests() {
    let hits = |text: &str| violations("run.rs", text);
    // code after a string holding `//` is still checked
    assert_eq!(
        hits("let u = \"http://x\"; let k: KafkaSourceConfig = todo!();\n").len(),
        1
    );
    // comments and doc comments are not code; one string naming one kind is no list
    assert!(hits(
        "// KafkaReader\n/// weir_kafka::OffsetRange\n/* nats::x */ let a = \"kafka\";\n"
    )
    .is_empty());
    // paths, field accesses and system types
    for code in [
        "use weir_kafka::OffsetRange;",
        "use weir_kafka::repartition::x;",
        "use weir_nats::source::x;",
        "let r: RepartitionSpec = s;",
        "if doc.kafka.is_some() {}",
        "let x = crate::connectors::nats::SOURCE;",
        "use weir_sinks::{A, B};",
        "let f: FileTarget = t;",
    ] {
        assert_eq!(hits(code).len(), 1, "{code}");
    }
    // a message listing kinds by hand
    assert_eq!(hits("let m = \"is not a Kafka or NATS source\";").len(), 1);
    // tests may name kinds; lifetimes and chars are not strings
    assert!(
        hits("#[cfg(test)]\nmod tests {\n    fn kafka() { let _ = \"kafka nats\"; }\n}\n")
            .is_empty()
    );
    assert!(hits("fn f<'a>(x: &'a str) -> char { '\"' }\n").is_empty());
    // a neutral name that merely contains a type's letters is not a kind
    assert!(hits("let upstreams = offset_rangesx;").is_empty());
}

/// Words that say a type belongs to one connector (`file` too: a type name is no path).
fn connector_words() -> impl Iterator<Item = &'static str> {
    KIND_NAMES.iter().copied().chain(["file"])
}

/// The words of an identifier, lowercase: `FileSinkDoc` and `file_sink_doc` are both
/// `file`, `sink`, `doc`.
fn words(ident: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut prev_lower = false;
    for ch in ident.chars() {
        if ch == '_' {
            prev_lower = false;
            out.push(String::new());
            continue;
        }
        if (ch.is_uppercase() && prev_lower) || out.is_empty() {
            out.push(String::new());
        }
        prev_lower = ch.is_lowercase() || ch.is_ascii_digit();
        out.last_mut().expect("a word").extend(ch.to_lowercase());
    }
    out.retain(|w| !w.is_empty());
    out
}

/// The types, traits, functions and constants `text` defines whose names hold a connector's
/// name (comments, strings and `#[cfg(test)]` items aside).
fn connector_definitions(rel: &str, text: &str) -> Vec<String> {
    const ITEMS: &[&str] = &[
        "struct", "enum", "union", "type", "trait", "fn", "const", "static", "mod",
    ];
    let (code, _) = without_tests(&lex(text).code);
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let tokens: Vec<&str> = line
            .split(|ch: char| !is_ident(ch))
            .filter(|w| !w.is_empty())
            .collect();
        for pair in tokens.windows(2) {
            let (item, name) = (pair[0], pair[1]);
            if ITEMS.contains(&item)
                && words(name)
                    .iter()
                    .any(|w| connector_words().any(|k| k == w))
            {
                found.push(format!("pipelines/src/{rel}:{}: {item} {name}", n + 1));
            }
        }
    }
    found
}

#[test]
fn the_yaml_model_defines_no_connector_type() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/src/model.rs");
    let text = std::fs::read_to_string(&path).expect("read model.rs");
    assert!(text.contains("pub struct PipelineDoc"), "wrong file?");
    let found = connector_definitions("model.rs", &text);
    assert!(
        found.is_empty(),
        "the YAML model defines a connector's type (move it into its folder, \
         pipelines/src/connectors/<kind>/doc.rs, and name it by path):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_model_guard_sees_connector_types_and_nothing_else() {
    let defs = |text: &str| connector_definitions("model.rs", text);
    for code in [
        "pub struct KafkaSinkDoc {}",
        "pub struct FileSourceDoc { path: String }",
        "pub enum GeneratorKind { DataIngestion }",
        "pub(crate) fn webhook_secret() {}",
        "pub type NatsCreds = String;",
    ] {
        assert_eq!(defs(code).len(), 1, "{code}");
    }
    // fields naming a connector's type by path, comments, strings, tests and words that
    // merely contain a kind's letters are no definitions
    for code in [
        "pub struct SinkDoc { pub kafka: Option<crate::connectors::kafka::doc::KafkaSinkDoc> }",
        "/// struct KafkaDoc\n// enum FileDoc\nlet m = \"struct NatsDoc\";",
        "#[cfg(test)]\nmod tests { struct KafkaFixture; }",
        "pub struct ProfileDoc {}",
        "pub struct DeadLetterDoc {}",
    ] {
        assert!(defs(code).is_empty(), "{code}");
    }
    // the model names no kind at all: its connector fields come from the registry's lists
    // (`connectors::sink_kinds!`...)
    let hits = |text: &str| violations("model.rs", text);
    assert!(hits("crate::connectors::sink_kinds!(sink_doc);").is_empty());
    assert_eq!(
        hits("pub kafka: Option<Spanned<crate::connectors::kafka::doc::KafkaSinkDoc>>,").len(),
        1
    );
    assert_eq!(hits("pub kafka: Option<Spanned<KafkaSinkDoc>>,").len(), 1);
    assert_eq!(hits("pub struct KafkaSinkDoc {").len(), 1);
}

/// What names a run mode: connectors are opened with neutral inputs (`OpenSource::bounds`,
/// `OpenSink::replaces`), never told which mode opens them.
const MODE_NAMES: &[&str] = &[
    "ReplaySetup",
    "PoolWorker",
    "Standalone",
    "JobHooks",
    "RunMode",
    "crate::mode::",
    "mode::",
];

/// Every line of `text`'s code (comments, strings and tests aside) naming a run mode.
fn mode_names(rel: &str, text: &str) -> Vec<String> {
    let (code, _) = without_tests(&lex(text).code);
    code.lines()
        .enumerate()
        .filter(|(_, line)| MODE_NAMES.iter().any(|m| occurs(line, m)))
        .map(|(n, line)| format!("pipelines/src/connectors/{rel}:{}: {}", n + 1, line.trim()))
        .collect()
}

#[test]
fn no_connector_knows_which_run_mode_opens_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/src/connectors");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(
        files.len() >= 10,
        "only {} files: wrong folder?",
        files.len()
    );
    let mut found = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&root).expect("under connectors");
        let text = std::fs::read_to_string(&f).expect("read source");
        found.extend(mode_names(&rel.to_string_lossy(), &text));
    }
    assert!(
        found.is_empty(),
        "connectors naming a run mode (give them what the mode changes as a neutral input of \
         `OpenSource` or `OpenSink` instead):\n{}",
        found.join("\n")
    );
    // the guard itself
    assert_eq!(
        mode_names("x.rs", "fn open(r: &ReplaySetup) {}\n// ReplaySetup\n").len(),
        1
    );
}

/// Kafka's runtime lives in `kafka/` (issue 24): the Kafka source, its `--until-caught-up`,
/// the Kafka sink and dead-letter output and a pool's repartition stage are `weir-kafka`'s,
/// beside its client plumbing, so no other reader's or writer's crate has Kafka code nor
/// depends on `weir-kafka`; and `weir-kafka` is under `pipelines` (its YAML and planning
/// glue, `pipelines/src/connectors/kafka/`), never the other way.
#[test]
fn kafka_lives_in_its_own_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let uses = |krate: &str| {
        let manifest =
            std::fs::read_to_string(root.join(krate).join("Cargo.toml")).expect("read Cargo.toml");
        weir_dependencies(&manifest)
    };
    for krate in [
        "sources",
        "sinks",
        "formats",
        "engine",
        "nats",
        "operators",
        "iceberg",
        "query",
    ] {
        assert!(
            !uses(krate).iter().any(|d| d == "weir-kafka"),
            "`{krate}` depends on weir-kafka: Kafka's code belongs in kafka/"
        );
    }
    let kafka = uses("kafka");
    for above in ["weir-pipelines", "weir-cli", "weir-query"] {
        assert!(
            !kafka.iter().any(|d| d == above),
            "weir-kafka depends on {above}: dependencies point one way (ARCHITECTURE.md)"
        );
    }
    for moved in [
        "sources/src/kafka",
        "sources/src/kafka.rs",
        "sources/src/repartition.rs",
        "sources/src/caught_up.rs",
        "sinks/src/kafka",
        "sinks/src/kafka.rs",
    ] {
        assert!(
            !root.join(moved).exists(),
            "{moved}: Kafka's runtime code belongs in kafka/src/"
        );
    }
    for here in ["kafka/src/source/mod.rs", "kafka/src/sink/mod.rs"] {
        assert!(
            root.join(here).is_file(),
            "{here} is missing: wrong folder?"
        );
    }
}

/// NATS's runtime lives in `nats/` (issue 24), as Kafka's does in `kafka/`: the NATS source,
/// sink and dead-letter output are `weir-nats`'s, beside its connection plumbing, so
/// `weir-sources` and `weir-sinks` have no NATS module nor depend on `weir-nats` or
/// `async-nats`; and `weir-nats` is under `pipelines` (its YAML and planning glue,
/// `pipelines/src/connectors/nats/`) and beside the other connectors' crates, never above
/// them.
#[test]
fn nats_lives_in_its_own_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let uses = |krate: &str| {
        let manifest =
            std::fs::read_to_string(root.join(krate).join("Cargo.toml")).expect("read Cargo.toml");
        dependencies(&manifest)
    };
    for krate in [
        "sources",
        "sinks",
        "formats",
        "engine",
        "kafka",
        "operators",
        "iceberg",
        "query",
    ] {
        let deps = uses(krate);
        for nats in ["weir-nats", "async-nats"] {
            assert!(
                !deps.iter().any(|d| d == nats),
                "`{krate}` depends on {nats}: NATS's code belongs in nats/"
            );
        }
    }
    let nats = uses("nats");
    for above in [
        "weir-pipelines",
        "weir-cli",
        "weir-query",
        "weir-sources",
        "weir-sinks",
        "weir-kafka",
    ] {
        assert!(
            !nats.iter().any(|d| d == above),
            "weir-nats depends on {above}: dependencies point one way (ARCHITECTURE.md)"
        );
    }
    for moved in [
        "sources/src/nats",
        "sources/src/nats.rs",
        "sources/tests/nats_runtime.rs",
        "sinks/src/nats",
        "sinks/src/nats.rs",
        "sinks/tests/nats_runtime.rs",
    ] {
        assert!(
            !root.join(moved).exists(),
            "{moved}: NATS's runtime code belongs in nats/"
        );
    }
    for krate in ["sources", "sinks"] {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read a source file");
            let code = lex(&text).code;
            for (n, line) in code.lines().enumerate() {
                assert!(
                    !["async_nats", "weir_nats", "mod nats"]
                        .iter()
                        .any(|p| occurs(line, p)),
                    "{}:{}: NATS code outside nats/: {}",
                    file.display(),
                    n + 1,
                    line.trim()
                );
            }
        }
    }
    for here in ["nats/src/source/mod.rs", "nats/src/sink/mod.rs"] {
        assert!(
            root.join(here).is_file(),
            "{here} is missing: wrong folder?"
        );
    }
}

#[test]
fn every_registered_kind_has_its_own_folder() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/src/connectors");
    let kinds = weir_pipelines::connectors::SINKS
        .iter()
        .map(|k| k.key)
        .chain(weir_pipelines::connectors::SOURCES.iter().map(|k| k.key))
        .chain(
            weir_pipelines::connectors::DEAD_LETTERS
                .iter()
                .map(|k| k.key),
        );
    for key in kinds {
        assert!(
            root.join(key).join("mod.rs").is_file(),
            "connector `{key}` has no folder pipelines/src/connectors/{key}/"
        );
    }
}

/// The weir crates a crate's `Cargo.toml` depends on (normal, dev and build dependencies).
fn weir_dependencies(manifest: &str) -> Vec<String> {
    dependencies(manifest)
        .into_iter()
        .filter(|d| d.starts_with("weir-"))
        .collect()
}

/// Every crate a crate's `Cargo.toml` depends on (normal, dev and build dependencies).
fn dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut found = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line.ends_with("dependencies]");
            continue;
        }
        if !in_deps || line.starts_with('#') {
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
        if !name.is_empty() {
            found.push(name.to_string());
        }
    }
    found
}

/// Dependencies point one way (ARCHITECTURE.md): `formats` (every decoder and encoder, the
/// schema-registry client) depends on `engine` only and `engine` on no weir crate, never on
/// a connector's crate (`weir-kafka`, `weir-sinks`…), so every connector can share them.
#[test]
fn the_shared_crates_depend_on_no_connector() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (krate, allowed) in [("formats", &["weir-engine"][..]), ("engine", &[][..])] {
        let manifest =
            std::fs::read_to_string(root.join(krate).join("Cargo.toml")).expect("read Cargo.toml");
        let deps = weir_dependencies(&manifest);
        let wrong: Vec<&String> = deps
            .iter()
            .filter(|d| !allowed.contains(&d.as_str()))
            .collect();
        assert!(
            wrong.is_empty(),
            "`{krate}` depends on {wrong:?}: it may depend on {allowed:?} only"
        );
    }
    assert_eq!(
        weir_dependencies("[dependencies]\nweir-engine.workspace = true\n# weir-x\n[dev-dependencies]\nweir-kafka = { path = \"k\" }\n[features]\nweir-y = []\n"),
        ["weir-engine", "weir-kafka"]
    );
}
