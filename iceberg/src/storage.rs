//! Where tables' files are: a local folder, or an object store (`s3://`, `gs://`, `az://`)
//! through the `object_store` crate weir's checkpoints use, with the same credentials (the
//! usual `AWS_*`, `GOOGLE_*`, `AZURE_*` environment variables). iceberg-rust 0.10 itself
//! only has the local file system.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, LocalFsStorage, OutputFile, Storage,
    StorageConfig, StorageFactory,
};
use iceberg::{Error, ErrorKind, Result};
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// An error of the object at `path`, keeping the object store's as its source (the sink
/// decides from its type whether the store was unreachable).
fn io_err(path: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Unexpected, path).with_source(e)
}

/// An error of the object at `path` that only a message describes (a URL no object store
/// serves, a file written after it was closed).
fn misuse(path: &str, what: &str) -> Error {
    Error::new(ErrorKind::Unexpected, format!("{path}: {what}"))
}

/// Builds [`WarehouseStorage`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WarehouseStorageFactory;

#[typetag::serde]
impl StorageFactory for WarehouseStorageFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(WarehouseStorage::default()))
    }
}

/// Local paths go to the local file system, URLs to their object store (one per bucket).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WarehouseStorage {
    #[serde(skip)]
    local: LocalFsStorage,
    #[serde(skip)]
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

fn is_local(path: &str) -> bool {
    !path.contains("://") || path.starts_with("file:")
}

impl WarehouseStorage {
    /// The object store of `path` (a URL) and the object's path in it.
    fn object(&self, path: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
        let url = url::Url::parse(path).map_err(|e| io_err(path, e))?;
        let root = format!("{}://{}", url.scheme(), url.authority());
        let store = {
            let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
            match stores.get(&root) {
                Some(s) => s.clone(),
                None => {
                    let (s, _) = weir_engine::checkpoint::open_object_store(&root)
                        .map_err(|e| misuse(path, &e))?;
                    stores.insert(root.clone(), s.clone());
                    s
                }
            }
        };
        let object = ObjectPath::from_url_path(url.path()).map_err(|e| io_err(path, e))?;
        Ok((store, object))
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for WarehouseStorage {
    async fn exists(&self, path: &str) -> Result<bool> {
        if is_local(path) {
            return self.local.exists(path).await;
        }
        let (store, object) = self.object(path)?;
        match store.head(&object).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_err(path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        if is_local(path) {
            return self.local.metadata(path).await;
        }
        let (store, object) = self.object(path)?;
        let meta = store.head(&object).await.map_err(|e| io_err(path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        if is_local(path) {
            return self.local.read(path).await;
        }
        let (store, object) = self.object(path)?;
        let got = store.get(&object).await.map_err(|e| io_err(path, e))?;
        got.bytes().await.map_err(|e| io_err(path, e))
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        if is_local(path) {
            return self.local.reader(path).await;
        }
        let (store, object) = self.object(path)?;
        Ok(Box::new(ObjectRead {
            store,
            object,
            path: path.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        if is_local(path) {
            return self.local.write(path, bs).await;
        }
        let (store, object) = self.object(path)?;
        store
            .put(&object, PutPayload::from(bs))
            .await
            .map(|_| ())
            .map_err(|e| io_err(path, e))
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        if is_local(path) {
            return self.local.writer(path).await;
        }
        let (store, object) = self.object(path)?;
        Ok(Box::new(ObjectWrite {
            writer: Some(BufWriter::new(store, object)),
            path: path.to_string(),
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        if is_local(path) {
            return self.local.delete(path).await;
        }
        let (store, object) = self.object(path)?;
        match store.delete(&object).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err(path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        if is_local(path) {
            return self.local.delete_prefix(path).await;
        }
        let (store, prefix) = self.object(path)?;
        let objects: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| io_err(path, e))?;
        for o in objects {
            match store.delete(&o.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io_err(path, e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Ranged reads of an object.
struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    object: ObjectPath,
    path: String,
}

#[async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        self.store
            .get_range(&self.object, range)
            .await
            .map_err(|e| io_err(&self.path, e))
    }
}

/// An object written in parts (a multipart upload once it outgrows 10 MiB); it exists only
/// once closed.
struct ObjectWrite {
    writer: Option<BufWriter>,
    path: String,
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| misuse(&self.path, "written after close"))?;
        w.put(bs).await.map_err(|e| io_err(&self.path, e))
    }

    async fn close(&mut self) -> Result<()> {
        let mut w = self
            .writer
            .take()
            .ok_or_else(|| misuse(&self.path, "closed twice"))?;
        w.shutdown().await.map_err(|e| io_err(&self.path, e))
    }
}
