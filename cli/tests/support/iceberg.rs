//! Reading weir's Iceberg tables back with independent readers: pyiceberg through the SQL
//! catalog, and DuckDB over the current snapshot's Parquet files (`tests/iceberg/read_table.py`,
//! in the tests' venv).
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/iceberg/read_table.py")
}

/// A table in a SQLite catalog, read with `python` (the tests' venv: `crash::venv_python()`).
pub struct Table {
    pub python: PathBuf,
    /// The catalog: a SQLite file's path or a `postgres://` URL.
    pub catalog: String,
    /// The warehouse: a folder or an `s3://` URL.
    pub warehouse: String,
    pub name: String,
    /// Environment of the reader (S3 endpoint and credentials).
    pub env: Vec<(String, String)>,
}

impl Table {
    /// The table `name` of the catalog `lake/catalog.db` whose warehouse is the folder `lake`.
    pub fn local(python: PathBuf, lake: &Path, name: &str) -> Table {
        Table {
            python,
            catalog: lake.join("catalog.db").to_string_lossy().into_owned(),
            warehouse: lake.to_string_lossy().into_owned(),
            name: name.to_string(),
            env: Vec::new(),
        }
    }

    fn read(&self, mode: &str) -> Vec<Map<String, Value>> {
        let out = Command::new(&self.python)
            .arg(script())
            .arg(&self.catalog)
            .arg(&self.warehouse)
            .args([self.name.as_str(), mode])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "reading {} ({mode}) failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The rows of the current snapshot, read by pyiceberg (timestamps as epoch ms).
    pub fn pyiceberg(&self) -> Vec<Map<String, Value>> {
        self.read("pyiceberg")
    }

    /// The rows of the current snapshot's data files, read by DuckDB.
    pub fn duckdb(&self) -> Vec<Map<String, Value>> {
        self.read("duckdb")
    }

    /// The data files of the current snapshot: `path`, `records`, `bytes`.
    pub fn files(&self) -> Vec<Map<String, Value>> {
        self.read("files")
    }

    /// Every snapshot: `id`, `parent`, `operation`, `summary`.
    pub fn snapshots(&self) -> Vec<Map<String, Value>> {
        self.read("snapshots")
    }

    /// The `weir.epoch`s of the snapshots, in commit order; panics when one repeats.
    pub fn epochs(&self) -> Vec<u64> {
        let epochs: Vec<u64> = self
            .snapshots()
            .iter()
            .filter_map(|s| s["summary"]["weir.epoch"].as_str()?.parse().ok())
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for e in &epochs {
            assert!(
                seen.insert(*e),
                "{}: epoch {e} committed twice: {epochs:?}",
                self.name
            );
        }
        epochs
    }
}
