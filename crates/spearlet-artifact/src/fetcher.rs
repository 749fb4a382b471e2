//! Fetching artifact bytes, verifying them and keeping them in the content-addressed cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use spearlet_core::{SpearError, SpearResult};

use crate::allowed_roots::AllowedRoots;
use crate::location::{ArtifactLocation, parse_checksum, sha256_hex};

/// Settings of artifact fetching.
#[derive(Clone, Debug)]
pub struct ArtifactFetcherConfig {
    /// The cache lives in `<cache_directory>/sha256/<hex>`.
    pub cache_directory: PathBuf,
    /// Directories `file://` locations may point into.
    pub allowed_roots: Vec<PathBuf>,
    /// Largest artifact accepted, in bytes (any source).
    pub max_artifact_bytes: u64,
    /// Time to establish an HTTP connection.
    pub http_connect_timeout: Duration,
    /// Time for a whole HTTP download, per attempt.
    pub http_total_timeout: Duration,
    /// Attempts for an HTTP download when the connection fails or the server answers 5xx.
    pub http_attempts: u32,
}

impl Default for ArtifactFetcherConfig {
    fn default() -> ArtifactFetcherConfig {
        ArtifactFetcherConfig {
            cache_directory: PathBuf::from("spearlet-data/artifacts"),
            allowed_roots: Vec::new(),
            max_artifact_bytes: 256 * 1024 * 1024,
            http_connect_timeout: Duration::from_secs(5),
            http_total_timeout: Duration::from_secs(60),
            http_attempts: 3,
        }
    }
}

/// Verified artifact bytes and where they are cached.
#[derive(Clone, Debug)]
pub struct FetchedArtifact {
    /// Lowercase hex sha256 of `bytes`.
    pub digest: String,
    pub bytes: Bytes,
    pub cached_path: PathBuf,
    /// Whether the bytes came from the cache without touching the source.
    pub cache_hit: bool,
}

/// What the content cache has done since the fetcher was built, for metrics. Real counts:
/// each is incremented where the event happens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Fetches served from the cache without touching the source (a fetch with a checksum whose
    /// blob was cached, or an `artifact://` location).
    pub hits: u64,
    /// Fetches that read their source (file, HTTP or `data:`), counted once per source read: a
    /// fetch that joins one already in flight shares its read and is not counted again.
    pub misses: u64,
    /// Bytes written into the cache as new blobs (fetched or uploaded).
    pub bytes_written: u64,
}

#[derive(Default)]
struct CacheCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_written: AtomicU64,
}

type InFlightFetch = Shared<BoxFuture<'static, SpearResult<FetchedArtifact>>>;

/// Fetches artifacts. Cheap to clone; clones share the cache and the in-flight table.
#[derive(Clone)]
pub struct ArtifactFetcher {
    inner: Arc<FetcherInner>,
}

struct FetcherInner {
    config: ArtifactFetcherConfig,
    allowed_roots: AllowedRoots,
    http: reqwest::Client,
    in_flight: Mutex<HashMap<(String, Option<String>), InFlightFetch>>,
    cache_counters: CacheCounters,
}

impl ArtifactFetcher {
    pub fn new(config: ArtifactFetcherConfig) -> SpearResult<ArtifactFetcher> {
        let blobs = config.cache_directory.join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|error| {
            SpearError::internal(format!("creating {}: {error}", blobs.display()))
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.http_connect_timeout)
            .timeout(config.http_total_timeout)
            .build()
            .map_err(|error| SpearError::internal(format!("building the HTTP client: {error}")))?;
        Ok(ArtifactFetcher {
            inner: Arc::new(FetcherInner {
                allowed_roots: AllowedRoots::new(&config.allowed_roots),
                config,
                http,
                in_flight: Mutex::new(HashMap::new()),
                cache_counters: CacheCounters::default(),
            }),
        })
    }

    pub fn allowed_roots(&self) -> &AllowedRoots {
        &self.inner.allowed_roots
    }

    /// The cache's hit, miss and byte counters. Lock-free.
    pub fn cache_stats(&self) -> CacheStats {
        let counters = &self.inner.cache_counters;
        CacheStats {
            hits: counters.hits.load(Ordering::Relaxed),
            misses: counters.misses.load(Ordering::Relaxed),
            bytes_written: counters.bytes_written.load(Ordering::Relaxed),
        }
    }

    /// Returns the verified bytes of the artifact at `location`. With a checksum, a cached copy
    /// is used without touching the source. Concurrent calls for the same location and checksum
    /// share one fetch.
    pub async fn fetch(&self, location: &str, checksum: &str) -> SpearResult<FetchedArtifact> {
        let expected_digest = parse_checksum(checksum)?;
        let parsed_location = ArtifactLocation::parse(location)?;
        if let Some(digest) = &expected_digest
            && let Some(cached) = self.read_cached(digest).await?
        {
            self.inner
                .cache_counters
                .hits
                .fetch_add(1, Ordering::Relaxed);
            return Ok(cached);
        }
        let key = (location.to_owned(), expected_digest.clone());
        let shared = {
            let mut in_flight = self.inner.in_flight.lock();
            if let Some(existing) = in_flight.get(&key) {
                existing.clone()
            } else {
                let fetcher = self.clone();
                let key_for_cleanup = key.clone();
                let future = async move {
                    let result = fetcher
                        .fetch_uncached(parsed_location, expected_digest)
                        .await;
                    fetcher.inner.in_flight.lock().remove(&key_for_cleanup);
                    result
                }
                .boxed()
                .shared();
                in_flight.insert(key, future.clone());
                future
            }
        };
        shared.await
    }

    /// Stores uploaded bytes in the cache (for `artifact://` locations) and returns their
    /// digest.
    pub async fn store_upload(&self, bytes: Bytes) -> SpearResult<FetchedArtifact> {
        self.check_size(bytes.len() as u64, "upload")?;
        let digest = sha256_hex(&bytes);
        let cached_path = self.write_cached(&digest, &bytes).await?;
        Ok(FetchedArtifact {
            digest,
            bytes,
            cached_path,
            cache_hit: false,
        })
    }

    async fn fetch_uncached(
        &self,
        location: ArtifactLocation,
        expected_digest: Option<String>,
    ) -> SpearResult<FetchedArtifact> {
        if !matches!(location, ArtifactLocation::Cached(_)) {
            self.inner
                .cache_counters
                .misses
                .fetch_add(1, Ordering::Relaxed);
        }
        let bytes = match location {
            ArtifactLocation::File(path) => self.read_file(&path).await?,
            ArtifactLocation::Http(url) => self.download(&url).await?,
            ArtifactLocation::Data(bytes) => {
                self.check_size(bytes.len() as u64, "data: URL")?;
                Bytes::from(bytes)
            }
            ArtifactLocation::Cached(digest) => {
                return match self.read_cached(&digest).await? {
                    Some(cached) => {
                        self.inner
                            .cache_counters
                            .hits
                            .fetch_add(1, Ordering::Relaxed);
                        verify(cached, expected_digest.as_deref())
                    }
                    None => Err(SpearError::failed_precondition(format!(
                        "artifact_spec.location: artifact://sha256:{digest} is not in this \
                         node's cache; upload it first"
                    ))),
                };
            }
        };
        let digest = sha256_hex(&bytes);
        if let Some(expected) = &expected_digest
            && expected != &digest
        {
            return Err(checksum_mismatch(expected, &digest));
        }
        let cached_path = self.write_cached(&digest, &bytes).await?;
        Ok(FetchedArtifact {
            digest,
            bytes,
            cached_path,
            cache_hit: false,
        })
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.inner
            .config
            .cache_directory
            .join("sha256")
            .join(digest)
    }

    async fn read_cached(&self, digest: &str) -> SpearResult<Option<FetchedArtifact>> {
        let path = self.blob_path(digest);
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                // The cache is trusted storage, but a truncated file from a crash must not be
                // served: re-verify (cheap next to compiling) and drop it on mismatch.
                let actual = sha256_hex(&bytes);
                if actual != digest {
                    tracing::warn!(path = %path.display(), "discarding corrupt cached artifact");
                    let _ = tokio::fs::remove_file(&path).await;
                    return Ok(None);
                }
                Ok(Some(FetchedArtifact {
                    digest: digest.to_owned(),
                    bytes: Bytes::from(bytes),
                    cached_path: path,
                    cache_hit: true,
                }))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(SpearError::internal(format!(
                "reading cached artifact {}: {error}",
                path.display()
            ))),
        }
    }

    async fn write_cached(&self, digest: &str, bytes: &[u8]) -> SpearResult<PathBuf> {
        static NEXT_TEMPORARY: AtomicU64 = AtomicU64::new(0);
        let path = self.blob_path(digest);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        let temporary = path.with_extension(format!(
            "tmp-{}-{}",
            std::process::id(),
            NEXT_TEMPORARY.fetch_add(1, Ordering::Relaxed)
        ));
        let write_result = async {
            tokio::fs::write(&temporary, bytes).await?;
            tokio::fs::rename(&temporary, &path).await
        }
        .await;
        write_result.map_err(|error| {
            SpearError::internal(format!("caching artifact {}: {error}", path.display()))
        })?;
        self.inner
            .cache_counters
            .bytes_written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(path)
    }

    async fn read_file(&self, path: &Path) -> SpearResult<Bytes> {
        let resolved = self
            .inner
            .allowed_roots
            .resolve("artifact_spec.location", path)?;
        let metadata = tokio::fs::metadata(&resolved).await.map_err(|error| {
            SpearError::invalid_argument(format!(
                "artifact_spec.location: {}: {error}",
                path.display()
            ))
        })?;
        if !metadata.is_file() {
            return Err(SpearError::invalid_argument(format!(
                "artifact_spec.location: {} is not a regular file",
                path.display()
            )));
        }
        self.check_size(metadata.len(), "file")?;
        let bytes = tokio::fs::read(&resolved).await.map_err(|error| {
            SpearError::invalid_argument(format!(
                "artifact_spec.location: reading {}: {error}",
                path.display()
            ))
        })?;
        Ok(Bytes::from(bytes))
    }

    async fn download(&self, url: &str) -> SpearResult<Bytes> {
        let attempts = self.inner.config.http_attempts.max(1);
        let mut last_error = None;
        for attempt in 1..=attempts {
            match self.download_once(url).await {
                Ok(bytes) => return Ok(bytes),
                Err(DownloadError::Final(error)) => return Err(error),
                Err(DownloadError::Retryable(error)) => {
                    tracing::debug!(url, attempt, "artifact download failed: {}", error.message);
                    last_error = Some(error);
                    if attempt < attempts {
                        tokio::time::sleep(Duration::from_millis(100 << (attempt - 1))).await;
                    }
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| SpearError::unavailable("artifact download failed"))
            .context(format!("after {attempts} attempts")))
    }

    async fn download_once(&self, url: &str) -> Result<Bytes, DownloadError> {
        let response = self.inner.http.get(url).send().await.map_err(|error| {
            let error_message = format!("artifact_spec.location: fetching {url}: {error}");
            if error.is_builder() {
                DownloadError::Final(SpearError::invalid_argument(error_message))
            } else {
                DownloadError::Retryable(SpearError::unavailable(error_message))
            }
        })?;
        let status = response.status();
        if status.is_server_error() {
            return Err(DownloadError::Retryable(SpearError::unavailable(format!(
                "artifact_spec.location: {url} answered {status}"
            ))));
        }
        if !status.is_success() {
            return Err(DownloadError::Final(SpearError::failed_precondition(
                format!("artifact_spec.location: {url} answered {status}"),
            )));
        }
        if let Some(length) = response.content_length() {
            self.check_size(length, "download")
                .map_err(DownloadError::Final)?;
        }
        let mut response = response;
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    self.check_size(body.len() as u64, "download")
                        .map_err(DownloadError::Final)?;
                }
                Ok(None) => break,
                Err(error) => {
                    return Err(DownloadError::Retryable(SpearError::unavailable(format!(
                        "artifact_spec.location: reading {url}: {error}"
                    ))));
                }
            }
        }
        Ok(Bytes::from(body))
    }

    fn check_size(&self, size: u64, source: &str) -> SpearResult<()> {
        let limit = self.inner.config.max_artifact_bytes;
        if size > limit {
            return Err(SpearError::resource_exhausted(format!(
                "artifact_spec.location: the {source} is larger than max_artifact_bytes \
                 ({limit} bytes)"
            )));
        }
        Ok(())
    }
}

enum DownloadError {
    Retryable(SpearError),
    Final(SpearError),
}

fn verify(
    artifact: FetchedArtifact,
    expected_digest: Option<&str>,
) -> SpearResult<FetchedArtifact> {
    match expected_digest {
        Some(expected) if expected != artifact.digest => {
            Err(checksum_mismatch(expected, &artifact.digest))
        }
        _ => Ok(artifact),
    }
}

fn checksum_mismatch(expected: &str, actual: &str) -> SpearError {
    SpearError::failed_precondition(format!(
        "artifact_spec.checksum mismatch: expected sha256:{expected}, got sha256:{actual}"
    ))
}
