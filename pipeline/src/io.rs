//! Storage through object_store: locations (paths and URLs) and reading whole objects.
//!
//! Local disk, `memory://`, `s3://`, `gs://` and `az://` all go through the same
//! [`ObjectStore`] trait, so tests exercise the production code path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::PipelineError;

/// A place in a store: the store plus a key prefix, and the text the user wrote.
#[derive(Clone)]
pub struct Location {
    /// The store (local disk, memory, S3, GCS, Azure).
    pub store: Arc<dyn ObjectStore>,
    /// Key prefix inside the store.
    pub prefix: StorePath,
    /// Canonical URL of the location, for messages and records.
    pub url: String,
    /// The directory on local disk, when the store is the local file system.
    pub local_dir: Option<PathBuf>,
    /// The same store's multipart API, when it has one (S3, GCS, Azure, memory): large uploads
    /// go through it so that their ids are on record (see [`crate::upload`]).
    pub multipart: Option<Arc<dyn MultipartStore>>,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The multipart API is the same store again: say only whether there is one.
        f.debug_struct("Location")
            .field("store", &self.store)
            .field("prefix", &self.prefix)
            .field("url", &self.url)
            .field("local_dir", &self.local_dir)
            .field("multipart", &self.multipart.is_some())
            .finish()
    }
}

/// `memory://` stores live for the whole process and are shared by name.
fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

impl Location {
    /// Open a location from a local path or a file://, memory://, s3://, gs:// or az:// URL.
    ///
    /// Cloud credentials and endpoints come from the environment as object_store reads them.
    pub fn parse(text: &str) -> Result<Location, PipelineError> {
        let bad = |e: object_store::Error| PipelineError::storage(text, e);
        let Some((scheme, rest)) = text.split_once("://") else {
            return Self::local(Path::new(text));
        };
        match scheme {
            "file" => Self::local(Path::new(rest)),
            "memory" => {
                let (name, key) = rest.split_once('/').unwrap_or((rest, ""));
                let store = memory_stores()
                    .lock()
                    .expect("memory store registry poisoned")
                    .entry(name.to_string())
                    .or_default()
                    .clone();
                Ok(Location {
                    store: store.clone(),
                    prefix: StorePath::from(key),
                    url: text.trim_end_matches('/').to_string(),
                    local_dir: None,
                    multipart: Some(store),
                })
            }
            "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" => {
                let url = url::Url::parse(text)
                    .map_err(|e| PipelineError::Input(format!("`{text}` is not a valid URL: {e}")))?;
                fn both<S: ObjectStore + MultipartStore>(s: S) -> (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>) {
                    let s = Arc::new(s);
                    (s.clone(), s)
                }
                let (store, multipart) = match scheme {
                    "s3" | "s3a" => {
                        both(object_store::aws::AmazonS3Builder::from_env().with_url(text).build().map_err(bad)?)
                    }
                    "gs" => both(
                        object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(text).build().map_err(bad)?,
                    ),
                    _ => both(
                        object_store::azure::MicrosoftAzureBuilder::from_env().with_url(text).build().map_err(bad)?,
                    ),
                };
                let prefix = StorePath::from_url_path(url.path()).map_err(|e| bad(e.into()))?;
                Ok(Location {
                    store,
                    prefix,
                    url: text.trim_end_matches('/').to_string(),
                    local_dir: None,
                    multipart: Some(multipart),
                })
            }
            other => Err(PipelineError::Input(format!(
                "unsupported URL scheme `{other}://` in `{text}`; use a path or file://, memory://, s3://, gs://, az://"
            ))),
        }
    }

    fn local(path: &Path) -> Result<Location, PipelineError> {
        let abs = std::path::absolute(path)
            .map_err(|e| PipelineError::io(format!("cannot resolve path {}", path.display()), e))?;
        let prefix =
            StorePath::from_absolute_path(&abs).map_err(|e| PipelineError::storage(path.display(), e.into()))?;
        Ok(Location {
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            prefix,
            url: abs.display().to_string(),
            local_dir: Some(abs),
            multipart: None,
        })
    }

    /// The key of `name` under this location.
    pub fn key(&self, name: &str) -> StorePath {
        name.split('/').filter(|p| !p.is_empty()).fold(self.prefix.clone(), |p, part| p.join(part))
    }

    /// Display form of `name` under this location.
    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{}", self.url.trim_end_matches('/'), name)
    }

    /// Read a whole object.
    pub async fn read(&self, name: &str) -> Result<Bytes, PipelineError> {
        let key = self.key(name);
        let r = self.store.get(&key).await.map_err(|e| PipelineError::storage(self.url_of(name), e))?;
        r.bytes().await.map_err(|e| PipelineError::storage(self.url_of(name), e))
    }

    /// Read a byte range of an object (headers of large files).
    pub async fn read_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<Bytes, PipelineError> {
        self.store.get_range(&self.key(name), range).await.map_err(|e| PipelineError::storage(self.url_of(name), e))
    }

    /// Read a whole object, or `None` if it does not exist.
    pub async fn read_opt(&self, name: &str) -> Result<Option<Bytes>, PipelineError> {
        match self.read(name).await {
            Ok(b) => Ok(Some(b)),
            Err(PipelineError::Storage { source: object_store::Error::NotFound { .. }, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write a whole object atomically (object_store puts are all-or-nothing on every backend).
    pub async fn write(&self, name: &str, data: impl Into<PutPayload>) -> Result<(), PipelineError> {
        self.store.put(&self.key(name), data.into()).await.map_err(|e| PipelineError::storage(self.url_of(name), e))?;
        Ok(())
    }

    /// Upload a local file to `name` for `uploader`. Large files go to object stores as multipart
    /// uploads on record (a killed uploader's is aborted later, see [`crate::upload`]); on local
    /// disk, and for small files, as one streamed put.
    pub async fn upload(
        &self,
        local: &Path,
        name: &str,
        uploader: &crate::upload::Uploader,
    ) -> Result<u64, PipelineError> {
        use tokio::io::AsyncReadExt;
        let size = tokio::fs::metadata(local)
            .await
            .map_err(|e| PipelineError::io(format!("cannot open {}", local.display()), e))?
            .len();
        if let Some(store) = self.multipart.as_ref().filter(|_| size > crate::upload::MULTIPART_THRESHOLD) {
            return crate::upload::upload(self, store, local, name, size, uploader).await;
        }
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| PipelineError::io(format!("cannot open {}", local.display()), e))?;
        let mut writer = object_store::buffered::BufWriter::new(self.store.clone(), self.key(name));
        let mut buf = vec![0u8; 8 << 20];
        let mut total = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| PipelineError::io(format!("cannot read {}", local.display()), e))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            tokio::io::AsyncWriteExt::write_all(&mut writer, &buf[..n])
                .await
                .map_err(|e| PipelineError::io(format!("cannot upload to {}", self.url_of(name)), e))?;
        }
        tokio::io::AsyncWriteExt::shutdown(&mut writer)
            .await
            .map_err(|e| PipelineError::io(format!("cannot upload to {}", self.url_of(name)), e))?;
        Ok(total)
    }

    /// Names (relative to this location) of every object under `sub`, sorted.
    pub async fn list(&self, sub: &str) -> Result<Vec<String>, PipelineError> {
        let base = self.key(sub);
        let metas: Vec<_> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| PipelineError::storage(self.url_of(sub), e))?;
        let mut names: Vec<String> = metas
            .into_iter()
            .filter_map(|m| {
                m.location
                    .prefix_match(&self.prefix)
                    .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/"))
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Make the named objects of a local location durable: each file's data, then each folder
    /// holding them, is fsynced (object stores are durable once a put returns: nothing to do).
    /// The commit protocol calls this before it creates the journal entry that names them, so
    /// a power cut cannot leave an entry naming a file the disk lost.
    pub fn sync(&self, names: &[String]) -> Result<(), PipelineError> {
        let Some(dir) = &self.local_dir else { return Ok(()) };
        let mut folders = std::collections::BTreeSet::new();
        for name in names {
            let path = dir.join(name);
            let io = |e| PipelineError::io(format!("cannot sync {}", path.display()), e);
            std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(io)?;
            folders.extend(path.parent().map(Path::to_path_buf));
        }
        for folder in folders {
            // Directories are opened read-only to sync their entries (Linux, macOS).
            std::fs::File::open(&folder)
                .and_then(|f| f.sync_all())
                .map_err(|e| PipelineError::io(format!("cannot sync {}", folder.display()), e))?;
        }
        Ok(())
    }

    /// Size, ETag and modification time of an object.
    pub async fn head(&self, name: &str) -> Result<object_store::ObjectMeta, PipelineError> {
        self.store.head(&self.key(name)).await.map_err(|e| PipelineError::storage(self.url_of(name), e))
    }

    /// Every object under `sub` with its size and modification time (names relative to this
    /// location).
    pub async fn list_meta(&self, sub: &str) -> Result<Vec<(String, object_store::ObjectMeta)>, PipelineError> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.key(sub)))
            .try_collect()
            .await
            .map_err(|e| PipelineError::storage(self.url_of(sub), e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.prefix_match(&self.prefix)?.map(|p| p.as_ref().to_string()).collect::<Vec<_>>();
                Some((name.join("/"), m))
            })
            .collect())
    }

    /// Delete an object; a missing object is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), PipelineError> {
        match self.store.delete(&self.key(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(PipelineError::storage(self.url_of(name), e)),
        }
    }

    /// Remove upload staging files that a killed process left in a local output directory, those
    /// for which `dead(name relative to the output, age)` says their writer is gone.
    ///
    /// object_store's local backend stages each put as `<name>#<n>` and hides such files from
    /// listings, so they are found with a plain directory walk.
    pub fn remove_local_staging_files(
        &self,
        mut dead: impl FnMut(&str, std::time::Duration) -> bool,
    ) -> Result<usize, PipelineError> {
        fn walk(
            base: &Path,
            dir: &Path,
            dead: &mut dyn FnMut(&str, std::time::Duration) -> bool,
            removed: &mut usize,
        ) -> std::io::Result<()> {
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    walk(base, &path, dead, removed)?;
                } else if let Some((_, suffix)) = entry.file_name().to_string_lossy().rsplit_once('#') {
                    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
                        continue;
                    }
                    let age = entry.metadata()?.modified()?.elapsed().unwrap_or_default();
                    let rel = path.strip_prefix(base).unwrap_or(&path).to_string_lossy().replace('\\', "/");
                    if dead(&rel, age) {
                        std::fs::remove_file(&path)?;
                        *removed += 1;
                    }
                }
            }
            Ok(())
        }
        let mut removed = 0;
        if let Some(dir) = self.local_dir.as_ref().filter(|d| d.is_dir()) {
            walk(dir, dir, &mut dead, &mut removed)
                .map_err(|e| PipelineError::io(format!("cannot clean {}", dir.display()), e))?;
        }
        Ok(removed)
    }
}

/// A file on local disk for a stage that needs a path (FFmpeg); remote objects are downloaded
/// into the scratch directory and removed when this is dropped.
#[derive(Debug)]
pub struct LocalFile {
    path: PathBuf,
    _temp: Option<tempfile::TempPath>,
}

impl LocalFile {
    /// The local path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Make `uri` available as a local file: local paths are used in place, URLs are downloaded.
pub async fn fetch_local(uri: &str, scratch: &Path) -> Result<LocalFile, PipelineError> {
    if !uri.contains("://") || uri.starts_with("file://") {
        let path = PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
        return Ok(LocalFile { path, _temp: None });
    }
    let (dir, name) = uri.rsplit_once('/').unwrap_or(("", uri));
    let loc = Location::parse(dir)?;
    let ext = Path::new(name).extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .suffix(&ext)
        .tempfile_in(scratch)
        .map_err(|e| PipelineError::io(format!("cannot create a scratch file in {}", scratch.display()), e))?;
    // Stream the object to disk: source videos can be far larger than memory allows.
    let mut stream = loc.store.get(&loc.key(name)).await.map_err(|e| PipelineError::storage(uri, e))?.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| PipelineError::storage(uri, e))?;
        std::io::Write::write_all(&mut tmp, &chunk).map_err(|e| PipelineError::io("cannot write a scratch file", e))?;
    }
    let temp = tmp.into_temp_path();
    Ok(LocalFile { path: temp.to_path_buf(), _temp: Some(temp) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_locations_are_shared_by_name_and_list_relative_names() {
        let a = Location::parse("memory://io-test/ds").unwrap();
        a.write("x/1.json", b"{}".to_vec()).await.unwrap();
        a.write("2.json", b"[]".to_vec()).await.unwrap();
        let b = Location::parse("memory://io-test/ds").unwrap();
        assert_eq!(b.list("").await.unwrap(), vec!["2.json", "x/1.json"]);
        assert_eq!(&b.read("x/1.json").await.unwrap()[..], b"{}");
        assert!(b.read_opt("missing").await.unwrap().is_none());
        b.delete("2.json").await.unwrap();
        b.delete("2.json").await.unwrap();
        assert_eq!(b.list("").await.unwrap(), vec!["x/1.json"]);
    }

    #[tokio::test]
    async fn remote_objects_are_fetched_to_scratch_and_removed_after_use() {
        let loc = Location::parse("memory://io-fetch/in").unwrap();
        loc.write("v.mp4", vec![7u8; 3 << 20]).await.unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let local = fetch_local("memory://io-fetch/in/v.mp4", scratch.path()).await.unwrap();
        assert_eq!(std::fs::read(local.path()).unwrap(), vec![7u8; 3 << 20]);
        assert_eq!(local.path().extension().unwrap(), "mp4");
        let path = local.path().to_path_buf();
        drop(local);
        assert!(!path.exists());
        assert!(fetch_local("memory://io-fetch/in/missing.mp4", scratch.path()).await.is_err());
    }

    #[tokio::test]
    async fn local_locations_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::parse(dir.path().to_str().unwrap()).unwrap();
        loc.write("a/b.txt", b"hi".to_vec()).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/b.txt")).unwrap(), b"hi");
        std::fs::write(dir.path().join("a/b.txt#3"), b"partial").unwrap();
        std::fs::write(dir.path().join("a/c.txt#4"), b"partial").unwrap();
        assert_eq!(loc.remove_local_staging_files(|name, _| name == "a/b.txt#3").unwrap(), 1);
        assert!(dir.path().join("a/c.txt#4").exists(), "a live writer's staging file stays");
        assert_eq!(loc.list("a").await.unwrap(), vec!["a/b.txt"]);
    }
}
