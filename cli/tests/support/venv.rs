//! The tests' Python venv, shared by the support modules that run its clients.

use std::path::PathBuf;

/// The Python of the tests' venv (`scripts/test-env.sh`: confluent-kafka, fastavro, pyarrow),
/// or `WEIR_TEST_PYTHON`.
pub fn venv_python() -> PathBuf {
    let p = std::env::var_os("WEIR_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/weir/venv/bin/python")
        });
    assert!(
        p.exists(),
        "{} is missing: run scripts/test-env.sh (a venv with confluent-kafka, fastavro and pyarrow)",
        p.display()
    );
    p
}
