//! Where checkpoints are stored: a local folder (written durably: every file fsynced before it
//! is renamed into place, and its folder after) or an object store; and how a manifest and its
//! state files are checked when they are read back (SHA-256 checksums).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use super::{caused, decode_partials, err, Manifest, Restored, FORMAT, FORMAT_OLDEST};
use crate::EngineError;

/// The local path a `file://` URL names (`file:///srv/state`), if `location` is one.
fn local_url_path(location: &str) -> Option<std::path::PathBuf> {
    if !location.starts_with("file://") {
        return None;
    }
    url::Url::parse(location).ok()?.to_file_path().ok()
}

/// The object store of a URL (`s3://`, `gs://`, `az://`/`abfs://`, `file://`) and the path in
/// it; credentials and endpoints come from the usual environment variables (`AWS_*`,
/// `GOOGLE_*`, `AZURE_*`, e.g. `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`).
pub fn open_object_store(location: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath), String> {
    let url =
        url::Url::parse(location).map_err(|e| format!("{location} is not a valid URL: {e}"))?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let (store, prefix) = object_store::parse_url_opts(&url, env)
        .map_err(|e| format!("cannot open {location}: {e}"))?;
    Ok((Arc::from(store), prefix))
}

/// Where checkpoints are stored: a local folder or an object-store URL.
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    location: String,
    /// The folder, for a local store (its emptied checkpoint folders are removed).
    pub(super) local: Option<PathBuf>,
    /// The process's I/O runtime.
    runtime: &'static tokio::runtime::Runtime,
}

/// The local checkpoint folders this process holds for writing (see
/// [`CheckpointStore::hold_for_writing`]), with their locked files.
static HELD: std::sync::Mutex<Vec<(PathBuf, std::fs::File)>> = std::sync::Mutex::new(Vec::new());

/// How long a run waits by default for another process to let go of its checkpoint folder
/// (one finishing its final checkpoint); `WEIR_CHECKPOINT_LOCK_WAIT` (seconds) sets it.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// How long a run waits for another process to let go of its checkpoint folder:
/// `WEIR_CHECKPOINT_LOCK_WAIT` seconds, or [`LOCK_WAIT`].
pub fn lock_wait() -> Duration {
    seconds_from_env("WEIR_CHECKPOINT_LOCK_WAIT", LOCK_WAIT)
}

/// The whole seconds environment variable `name` gives, or `default` (with a warning when it
/// is set to something else).
fn seconds_from_env(name: &str, default: Duration) -> Duration {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => {
                tracing::warn!(value = %v, "{name} is not a whole number of seconds: {default:?} instead");
                default
            }
        },
        Err(_) => default,
    }
}

/// How long a checkpoint that cannot be stored is tried again before the run fails, when
/// `WEIR_CHECKPOINT_STORE_TIMEOUT` (seconds) does not say: ten minutes.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a checkpoint that cannot be stored is tried again: `WEIR_CHECKPOINT_STORE_TIMEOUT`
/// seconds, or [`STORE_TIMEOUT`].
pub fn store_timeout() -> Duration {
    seconds_from_env("WEIR_CHECKPOINT_STORE_TIMEOUT", STORE_TIMEOUT)
}

/// Whether a store's error is one that trying again cannot mend: the store refused the
/// process's rights (a folder it may not write, credentials a bucket refuses). Told by the
/// errors' kinds, not their text.
pub fn refused_for_good(e: &EngineError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::PermissionDenied {
                return true;
            }
        }
        if let Some(o) = c.downcast_ref::<object_store::Error>() {
            if matches!(
                o,
                object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ) {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// The lock file in a local checkpoint folder.
const LOCK_FILE: &str = "weir.lock";

impl CheckpointStore {
    /// Holds a local checkpoint folder for this process's writes: an exclusive lock on its
    /// `weir.lock`, which the system releases when the process ends (even killed), so that
    /// two runs of one pipeline never write the same checkpoints and outputs at once (each
    /// would restore, truncate and commit the other's files). A folder another process holds
    /// is waited for up to `wait` (a run finishing its final checkpoint), then refused.
    /// Object stores have no such lock: a pool's claims fence their workers, and a single
    /// process must not be started twice on one location.
    pub fn hold_for_writing(&self, wait: Duration) -> Result<(), EngineError> {
        let Some(dir) = &self.local else {
            return Ok(());
        };
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        let mut held = HELD
            .lock()
            .map_err(|_| err("the checkpoint lock list is poisoned"))?;
        if held.iter().any(|(d, _)| *d == dir) {
            return Ok(());
        }
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| caused(format!("cannot open {}", path.display()), e))?;
        let started = std::time::Instant::now();
        let mut warned = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < wait => {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(folder = %dir.display(), ?wait, "another process holds the checkpoint folder (a run of this pipeline that is still stopping?): waiting for it");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(EngineError::checkpoint(format!(
                        "another process holds the checkpoint folder {} (for {wait:?}): two \
                         runs of one pipeline would write the same checkpoints and outputs. \
                         Stop the other run first (or give it longer to stop: \
                         WEIR_CHECKPOINT_LOCK_WAIT, in seconds)",
                        dir.display()
                    ))
                    .user());
                }
                // a file system without locks (some network or FUSE mounts): ran as before
                Err(std::fs::TryLockError::Error(e)) => {
                    tracing::warn!(folder = %dir.display(), error = %e, "the checkpoint folder cannot be locked: nothing keeps a second run of this pipeline from writing into it");
                    return Ok(());
                }
            }
        }
        held.push((dir, file));
        Ok(())
    }

    /// Opens `location`: `s3://`, `gs://`, `az://`/`abfs://`, `file://` URLs (credentials from
    /// the usual environment variables, e.g. `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`), or a local
    /// path, created when missing.
    pub fn open(location: &str) -> Result<Self, EngineError> {
        // a `file://` URL is the local folder it names: written durably (fsync), locked
        // against a second run, and its emptied checkpoint folders removed, as a path is
        if let Some(path) = local_url_path(location) {
            let mut store = Self::open(&path.to_string_lossy())?;
            store.location = location.to_string();
            return Ok(store);
        }
        let runtime = crate::io::runtime().map_err(err)?;
        let is_url = location.contains("://");
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = if is_url {
            open_object_store(location).map_err(|m| EngineError::checkpoint(m).user())?
        } else {
            let path = Path::new(location);
            std::fs::create_dir_all(path)
                .map_err(|e| caused(format!("cannot create {location}"), e))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(path)
                .map_err(|e| caused(format!("cannot open {location}"), e))?;
            (Arc::new(fs), ObjectPath::default())
        };
        Ok(CheckpointStore {
            store,
            prefix,
            local: (!is_url).then(|| Path::new(location).to_path_buf()),
            location: location.to_string(),
            runtime,
        })
    }

    /// Where the checkpoints are, as configured.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn path(&self, name: &str) -> ObjectPath {
        let mut p = self.prefix.clone();
        for part in name.split('/') {
            p = p.clone().join(part);
        }
        p
    }

    /// Stores an object atomically (a reader sees all of it or nothing). In a local folder
    /// the object is durable when this returns (see [`write_durably`]).
    pub fn put(&self, name: &str, bytes: impl Into<bytes::Bytes>) -> Result<(), EngineError> {
        let bytes: bytes::Bytes = bytes.into();
        let path = self.path(name);
        if let Some(root) = &self.local {
            return write_durably(&root.join(path.as_ref()), &bytes, false)
                .map(|_| ())
                .map_err(|e| caused(format!("cannot write {}/{name}", self.location), e));
        }
        self.runtime
            .block_on(self.store.put(&path, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| caused(format!("cannot write {}/{name}", self.location), e))
    }

    /// Stores an object only if none exists under that name; returns whether it did (the
    /// store decides atomically: of two workers creating one name, one wins).
    pub fn put_new(&self, name: &str, bytes: Vec<u8>) -> Result<bool, EngineError> {
        let path = self.path(name);
        if let Some(root) = &self.local {
            return write_durably(&root.join(path.as_ref()), &bytes, true)
                .map_err(|e| caused(format!("cannot create {}/{name}", self.location), e));
        }
        let opts = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        match self
            .runtime
            .block_on(self.store.put_opts(&path, PutPayload::from(bytes), opts))
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(caused(format!("cannot create {}/{name}", self.location), e)),
        }
    }

    /// Reads an object, `None` when it does not exist.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let path = self.path(name);
        self.runtime.block_on(async {
            match self.store.get(&path).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map(|b| Some(b.to_vec()))
                    .map_err(|e| caused(format!("cannot read {}/{name}", self.location), e)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(caused(format!("cannot read {}/{name}", self.location), e)),
            }
        })
    }

    /// Names of every object, relative to the location.
    pub fn list(&self) -> Result<Vec<String>, EngineError> {
        self.list_under("")
    }

    /// Names of the objects under folder `under` (relative to the location, `""` for all),
    /// relative to the location.
    pub fn list_under(&self, under: &str) -> Result<Vec<String>, EngineError> {
        use futures_util::StreamExt;
        let prefix = self.prefix.clone();
        let below = if under.is_empty() {
            prefix.clone()
        } else {
            self.path(under)
        };
        let location = self.location.clone();
        self.runtime.block_on(async {
            let mut out = Vec::new();
            let mut s = self.store.list(Some(&below));
            while let Some(m) = s.next().await {
                let m = m.map_err(|e| caused(format!("cannot list {location}"), e))?;
                let rel: Vec<_> = m
                    .location
                    .prefix_match(&prefix)
                    .into_iter()
                    .flatten()
                    .collect();
                out.push(
                    rel.iter()
                        .map(|p| p.as_ref().to_string())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
            Ok(out)
        })
    }

    /// Makes checkpoints `epochs` incomplete: the damaged ones a restore skipped, newer than
    /// the one it restored. Left complete, garbage collection would count them among the
    /// checkpoints it keeps (their manifests read) and delete the run's own newer ones and
    /// the one restored; the run writes their epochs again anyway. Each manifest is renamed
    /// `manifest.json.damaged` beside it (a damage that passes, such as a store's lagging
    /// replica, can still be looked into), until garbage collection removes the folder.
    pub fn discard(&self, epochs: &[u64]) -> Result<(), EngineError> {
        for &e in epochs {
            let name = manifest_name(e);
            let (from, to) = (self.path(&name), self.path(&format!("{name}.damaged")));
            match self.runtime.block_on(self.store.rename(&from, &to)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(caused(format!("cannot set {name} aside"), err)),
            }
        }
        Ok(())
    }

    /// Deletes objects (missing ones are fine).
    pub fn delete(&self, names: &[String]) -> Result<(), EngineError> {
        for name in names {
            let path = self.path(name);
            match self.runtime.block_on(self.store.delete(&path)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(caused(format!("cannot delete {name}"), e)),
            }
        }
        Ok(())
    }

    /// Epochs with a complete checkpoint (a manifest), oldest first.
    pub fn complete_epochs(&self) -> Result<Vec<u64>, EngineError> {
        let mut epochs: Vec<u64> = self
            .list()?
            .iter()
            .filter_map(|n| {
                let rest = n.strip_prefix("chk-")?;
                let (epoch, file) = rest.split_once('/')?;
                (file == "manifest.json").then(|| epoch.parse().ok())?
            })
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// The manifest of the newest complete checkpoint whose manifest reads back intact; a
    /// damaged one is skipped with a warning (see [`Self::restorable`] for the state files).
    pub fn latest(&self) -> Result<Option<Manifest>, EngineError> {
        for epoch in self.complete_epochs()?.into_iter().rev() {
            match self.manifest(epoch) {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e @ EngineError::Damaged { .. }) => {
                    let why = e.damage().unwrap_or_default();
                    tracing::warn!(epoch, location = %self.location, "skipping a damaged checkpoint: {why}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// The newest checkpoint that reads back intact (manifest and state files, checksums
    /// verified), with the epochs of the newer damaged ones it skipped (each logged as a
    /// warning). A store that cannot be read (not a damaged checkpoint) is an error: an older
    /// checkpoint is only taken when the newer ones are known to be damaged.
    pub fn restorable(&self) -> Result<(Option<Restored>, Vec<u64>), EngineError> {
        let mut skipped = Vec::new();
        for epoch in self.complete_epochs()?.into_iter().rev() {
            let loaded = match self.manifest(epoch) {
                Ok(Some(m)) => self.load(&m),
                Ok(None) => continue,
                Err(e) => Err(e),
            };
            match loaded {
                Ok(r) => return Ok((Some(r), skipped)),
                Err(e @ EngineError::Damaged { .. }) => {
                    let why = e.damage().unwrap_or_default();
                    tracing::warn!(epoch, location = %self.location, "skipping a damaged checkpoint: {why}");
                    skipped.push(epoch);
                }
                Err(e) => return Err(e),
            }
        }
        Ok((None, skipped))
    }

    /// The manifest of checkpoint `epoch`, `None` when it is not complete (or was deleted);
    /// [`EngineError::Damaged`] when it does not read back intact (truncated, not JSON, its
    /// checksum differs).
    pub fn manifest(&self, epoch: u64) -> Result<Option<Manifest>, EngineError> {
        let name = manifest_name(epoch);
        let Some(bytes) = self.get(&name)? else {
            return Ok(None);
        };
        let m = decode_manifest(&bytes).map_err(|e| {
            EngineError::damaged_caused(format_args!("{}/{name}", self.location), e)
        })?;
        if !(FORMAT_OLDEST..=FORMAT).contains(&m.format) {
            return Err(err(format!(
                "{}/{name} has format {} but this weir reads formats {FORMAT_OLDEST} to {FORMAT}",
                self.location, m.format
            )));
        }
        Ok(Some(m))
    }

    /// Reads the state of every operator of a checkpoint, in operator order, checking each
    /// file against the manifest's checksum ([`EngineError::Damaged`] when one is missing,
    /// differs or does not decode).
    pub fn load(&self, manifest: &Manifest) -> Result<Restored, EngineError> {
        let mut operators = Vec::new();
        for op in &manifest.operators {
            let partials = match &op.file {
                Some(file) => {
                    let name = format!("{}/{file}", chk_dir(manifest.epoch));
                    let at = format!("{}/{name}", self.location);
                    let damaged = |why: String| EngineError::damaged(format_args!("{at}: {why}"));
                    let bytes = self
                        .get(&name)?
                        .ok_or_else(|| damaged("missing".to_string()))?;
                    match manifest.checksums.get(file) {
                        Some(sum) if *sum != sha256_hex(&bytes) => {
                            return Err(damaged(format!(
                                "its SHA-256 is not the manifest's ({} bytes read)",
                                bytes.len()
                            )))
                        }
                        // a checkpoint written before checksums: decoding checks what it can
                        _ => {}
                    }
                    decode_partials(&bytes).map_err(|e| EngineError::damaged_caused(&at, e))?
                }
                None => Vec::new(),
            };
            operators.push(partials);
        }
        Ok(Restored {
            manifest: manifest.clone(),
            operators,
        })
    }

    /// The emitted windows kept for SQL that a checkpoint lists, per operator of its
    /// manifest, one batch per window (files missing or damaged are skipped with a warning).
    pub fn load_retained(&self, manifest: &Manifest) -> Vec<Vec<arrow::record_batch::RecordBatch>> {
        manifest
            .operators
            .iter()
            .map(|op| super::retained::load(self, &op.retained))
            .collect()
    }
}

pub(super) fn chk_dir(epoch: u64) -> String {
    format!("chk-{epoch:010}")
}

pub(super) fn manifest_name(epoch: u64) -> String {
    format!("{}/manifest.json", chk_dir(epoch))
}

/// The SHA-256 of `bytes`, in lowercase hex.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// How a manifest with its own checksum starts: `{"checksum":"<64 hex digits>",`.
const CHECKSUM_HEAD: &str = "{\"checksum\":\"";

/// A manifest as stored: its JSON with a first member `checksum`, the SHA-256 of the same
/// JSON without that member (so a truncated or altered manifest is told from an intact one).
pub(crate) fn encode_manifest(m: &Manifest) -> Result<Vec<u8>, EngineError> {
    let body = serde_json::to_vec_pretty(m).map_err(err)?;
    let Some(rest) = body.strip_prefix(b"{") else {
        return Err(err("a manifest is not a JSON object"));
    };
    let mut out = Vec::with_capacity(body.len() + 80);
    out.extend_from_slice(CHECKSUM_HEAD.as_bytes());
    out.extend_from_slice(sha256_hex(&body).as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(rest);
    Ok(out)
}

/// Why a stored manifest does not read back intact.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("truncated ({0} bytes)")]
    Truncated(usize),
    #[error("its checksum is malformed")]
    MalformedChecksum,
    /// The body's SHA-256 is not the recorded one (the manifest's length given).
    #[error("its SHA-256 is not the one it records ({0} bytes: truncated or altered)")]
    ChecksumDiffers(usize),
    /// The checked body does not parse.
    #[error(transparent)]
    Json(serde_json::Error),
    /// A manifest written before checksums that does not parse.
    #[error("not a manifest")]
    NotManifest(#[source] serde_json::Error),
}

/// Reads what [`encode_manifest`] wrote, checking its checksum; a manifest written before
/// checksums (no `checksum` member first) is only parsed.
pub(super) fn decode_manifest(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    if let Some(rest) = bytes.strip_prefix(CHECKSUM_HEAD.as_bytes()) {
        let (sum, tail) = rest
            .split_at_checked(64)
            .ok_or(ManifestError::Truncated(bytes.len()))?;
        let tail = tail
            .strip_prefix(b"\",")
            .ok_or(ManifestError::MalformedChecksum)?;
        let mut body = Vec::with_capacity(tail.len() + 1);
        body.push(b'{');
        body.extend_from_slice(tail);
        if sha256_hex(&body).as_bytes() != sum {
            return Err(ManifestError::ChecksumDiffers(bytes.len()));
        }
        return serde_json::from_slice(&body).map_err(ManifestError::Json);
    }
    serde_json::from_slice(bytes).map_err(ManifestError::NotManifest)
}

/// Tells temporary files apart (with the process id): see [`write_durably`].
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` so that it survives a crash of the machine once this returns:
/// into a temporary file beside it (`<name>#<digits>`, a name object_store's local listing
/// skips), fsynced, then renamed into place (or, `create_only`, hard-linked: that fails when
/// the name exists, so of two writers one wins; returns `false` for the loser), then the
/// folder fsynced so that the new name is durable too. Missing folders are created, and
/// their parents fsynced.
pub(crate) fn write_durably(path: &Path, bytes: &[u8], create_only: bool) -> std::io::Result<bool> {
    use std::io::Write;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other(format!(
            "{} is not a file path",
            path.display()
        )));
    };
    create_dirs_durably(dir)?;
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let mut temp = name.to_os_string();
    temp.push(format!("#{}{seq:08}", std::process::id()));
    let temp = dir.join(temp);
    let written = (|| {
        let mut f = std::fs::File::create_new(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    let placed = written.and_then(|()| {
        if create_only {
            match std::fs::hard_link(&temp, path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        } else {
            std::fs::rename(&temp, path).map(|()| true)
        }
    });
    if create_only || placed.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    let placed = placed?;
    sync_dir(dir)?;
    Ok(placed)
}

/// Creates `dir` and its missing parents, fsyncing the folder each new one was created in.
fn create_dirs_durably(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Fsyncs a folder, so that the names created or renamed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::super::{collect_garbage, encode_partials, test_manifest};
    use super::*;
    use crate::types::PartialWindow;
    use arrow::array::{StringArray, UInt64Array};
    use std::collections::BTreeSet;

    /// A `file://` location is the local folder: locked against a second run and its
    /// emptied checkpoint folders removed by garbage collection, as a path is.
    #[test]
    fn a_file_url_is_the_local_folder_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("state").display());
        let store = CheckpointStore::open(&url).unwrap();
        assert_eq!(store.location(), url);
        assert_eq!(
            store.local.as_deref(),
            Some(dir.path().join("state").as_path())
        );
        store.hold_for_writing(Duration::from_millis(10)).unwrap();
        assert!(dir.path().join("state").join(LOCK_FILE).exists());
        for epoch in 1..=4 {
            store_checkpoint(&store, epoch);
        }
        collect_garbage(&store, 1, false, &BTreeSet::new()).unwrap();
        let folders = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("chk-"))
            })
            .count();
        assert!(folders <= 2, "{folders} checkpoint folders kept");
    }

    /// Stores checkpoint `epoch` as the coordinator does: a state file with its checksum,
    /// then the manifest.
    fn store_checkpoint(store: &CheckpointStore, epoch: u64) {
        let p = PartialWindow {
            window_start: epoch as i64,
            keys: vec![Arc::new(StringArray::from(vec!["a", "b"]))],
            states: vec![Arc::new(UInt64Array::from(vec![epoch, 2]))],
        };
        let bytes = encode_partials(&[p]).unwrap();
        let mut m = test_manifest(epoch);
        m.checksums.insert("op-0.arrow".into(), sha256_hex(&bytes));
        m.operators.push(super::super::OperatorRecord {
            name: "w".into(),
            file: Some("op-0.arrow".into()),
            rows: 2,
            flushed: 0,
            emitted: 0,
            retained: Vec::new(),
            closed: Default::default(),
        });
        store
            .put(&format!("{}/op-0.arrow", chk_dir(epoch)), bytes)
            .unwrap();
        store
            .put(&manifest_name(epoch), encode_manifest(&m).unwrap())
            .unwrap();
    }

    #[test]
    fn a_restore_skips_damaged_checkpoints_to_the_newest_intact_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        for e in 1..=3 {
            store_checkpoint(&store, e);
        }
        let (r, skipped) = store.restorable().unwrap();
        assert_eq!((r.unwrap().manifest.epoch, skipped), (3, vec![]));
        // the newest manifest half written (as after a crash of the machine without fsync)
        let m3 = dir.path().join(manifest_name(3));
        let len = std::fs::metadata(&m3).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&m3).unwrap();
        f.set_len(len / 2).unwrap();
        assert!(matches!(
            store.manifest(3),
            Err(EngineError::Damaged { .. })
        ));
        assert_eq!(store.latest().unwrap().unwrap().epoch, 2);
        // a state file of the next one altered: one byte flipped
        let op2 = dir.path().join(format!("{}/op-0.arrow", chk_dir(2)));
        let mut bytes = std::fs::read(&op2).unwrap();
        let last = bytes.len() - 9;
        bytes[last] ^= 0x40;
        std::fs::write(&op2, bytes).unwrap();
        let (r, skipped) = store.restorable().unwrap();
        let r = r.unwrap();
        assert_eq!((r.manifest.epoch, skipped), (1, vec![3, 2]));
        assert_eq!(r.operators[0].len(), 1);
        // an altered manifest that still parses is told by its checksum
        let m1 = dir.path().join(manifest_name(1));
        let text = std::fs::read_to_string(&m1).unwrap();
        std::fs::write(&m1, text.replace("\"epoch\": 1", "\"epoch\": 7")).unwrap();
        assert!(matches!(
            store.manifest(1),
            Err(EngineError::Damaged { .. })
        ));
        let (r, skipped) = store.restorable().unwrap();
        assert!(r.is_none());
        assert_eq!(skipped, vec![3, 2, 1]);
    }

    /// Damaged checkpoints newer than the one restored (their state altered, their manifests
    /// intact) are discarded: garbage collection after the run's next checkpoint then keeps
    /// that one, not a damaged one whose manifest reads.
    #[test]
    fn damaged_checkpoints_newer_than_the_restored_one_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        for e in 1..=4 {
            store_checkpoint(&store, e);
        }
        for e in [3, 4] {
            let op = dir.path().join(format!("{}/op-0.arrow", chk_dir(e)));
            let mut bytes = std::fs::read(&op).unwrap();
            let at = bytes.len() - 9;
            bytes[at] ^= 0x40;
            std::fs::write(&op, bytes).unwrap();
        }
        let (r, skipped) = store.restorable().unwrap();
        assert_eq!(
            (r.unwrap().manifest.epoch, skipped.clone()),
            (2, vec![4, 3])
        );
        store.discard(&skipped).unwrap();
        let aside = dir.path().join(format!("{}.damaged", manifest_name(4)));
        assert!(aside.exists(), "the damaged manifest is set aside");
        // the run writes its epoch 3, and collects with `keep: 1`
        store_checkpoint(&store, 3);
        collect_garbage(&store, 1, false, &BTreeSet::new()).unwrap();
        let (r, skipped) = store.restorable().unwrap();
        assert_eq!((r.unwrap().manifest.epoch, skipped), (3, vec![]));
    }

    #[test]
    fn a_manifest_written_before_checksums_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        let m = test_manifest(4);
        store
            .put(&manifest_name(4), serde_json::to_vec_pretty(&m).unwrap())
            .unwrap();
        assert_eq!(store.latest().unwrap().unwrap().epoch, 4);
    }

    /// A store refusing the process's rights is not tried again; a full disk or a store that
    /// does not answer is. Told by the errors' kinds.
    #[test]
    fn a_store_refusing_the_rights_is_refused_for_good() {
        use std::io::{Error, ErrorKind};
        let io = |kind| EngineError::checkpoint_caused("cannot write", Error::from(kind));
        assert!(refused_for_good(&io(ErrorKind::PermissionDenied)));
        assert!(!refused_for_good(&io(ErrorKind::StorageFull)));
        assert!(!refused_for_good(&io(ErrorKind::TimedOut)));
        let denied = object_store::Error::Unauthenticated {
            path: "chk".into(),
            source: "expired credentials".into(),
        };
        assert!(refused_for_good(&EngineError::checkpoint_caused(
            "cannot write",
            denied
        )));
        let generic = object_store::Error::Generic {
            store: "S3",
            source: "connection reset".into(),
        };
        assert!(!refused_for_good(&EngineError::checkpoint_caused(
            "cannot write",
            generic
        )));
    }

    #[test]
    fn garbage_collection_keeps_the_newest_intact_checkpoint_when_a_newer_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        for e in 1..=3 {
            store_checkpoint(&store, e);
        }
        std::fs::write(dir.path().join(manifest_name(3)), b"{\"checksum\":\"12").unwrap();
        collect_garbage(&store, 1, false, &BTreeSet::new()).unwrap();
        // 2 is the only intact fallback: kept, with the damaged 3; 1 deleted
        assert_eq!(store.complete_epochs().unwrap(), vec![2, 3]);
        assert_eq!(store.restorable().unwrap().0.unwrap().manifest.epoch, 2);
        // in a pool, a damaged manifest does not stop the collection either
        collect_garbage(&store, 1, true, &BTreeSet::new()).unwrap();
        // an epoch a claim points to is kept whatever `keep` says
        store_checkpoint(&store, 4);
        store_checkpoint(&store, 5);
        collect_garbage(&store, 1, false, &BTreeSet::from([4])).unwrap();
        assert_eq!(store.complete_epochs().unwrap(), vec![4, 5]);
    }

    #[test]
    fn local_writes_replace_atomically_and_create_once_leaving_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        store.put("a/b/c.json", b"1".to_vec()).unwrap();
        store.put("a/b/c.json", b"22".to_vec()).unwrap();
        assert_eq!(store.get("a/b/c.json").unwrap(), Some(b"22".to_vec()));
        assert!(store.put_new("a/b/d.json", b"x".to_vec()).unwrap());
        assert!(!store.put_new("a/b/d.json", b"y".to_vec()).unwrap());
        assert_eq!(store.get("a/b/d.json").unwrap(), Some(b"x".to_vec()));
        let files: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(store.list().unwrap().len(), 2);
    }
}
