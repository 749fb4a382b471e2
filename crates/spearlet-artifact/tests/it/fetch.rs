//! Fetching from every source against real files and a real local HTTP server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use spearlet_artifact::{ArtifactFetcher, ArtifactFetcherConfig, CacheStats, sha256_hex};
use spearlet_core::ErrorKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fetcher(data: &std::path::Path, roots: Vec<std::path::PathBuf>) -> ArtifactFetcher {
    ArtifactFetcher::new(ArtifactFetcherConfig {
        cache_directory: data.join("artifacts"),
        allowed_roots: roots,
        max_artifact_bytes: 1024,
        http_connect_timeout: Duration::from_secs(2),
        http_total_timeout: Duration::from_secs(5),
        http_attempts: 3,
    })
    .unwrap()
}

/// A tiny HTTP/1.1 server: answers each connection with the next status in `statuses`
/// (the last one repeats) and `body`. Counts requests.
async fn serve(statuses: Vec<u16>, body: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let index = counter.fetch_add(1, Ordering::SeqCst);
            let status = statuses[index.min(statuses.len() - 1)];
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body).await;
            });
        }
    });
    (format!("http://{address}/artifact.wasm"), requests)
}

#[tokio::test]
async fn files_inside_roots_are_read_and_cached_by_digest() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("a.wasm"), b"module bytes").unwrap();
    let fetcher = fetcher(data.path(), vec![root.path().to_path_buf()]);
    let location = format!("file://{}/a.wasm", root.path().display());
    let fetched = fetcher.fetch(&location, "").await.unwrap();
    assert_eq!(fetched.digest, sha256_hex(b"module bytes"));
    assert!(fetched.cached_path.exists());
    // With the checksum the cache answers without reading the source.
    std::fs::remove_file(root.path().join("a.wasm")).unwrap();
    let again = fetcher
        .fetch(&location, &format!("sha256:{}", fetched.digest))
        .await
        .unwrap();
    assert!(again.cache_hit);
    assert_eq!(
        fetcher.cache_stats(),
        CacheStats {
            hits: 1,
            misses: 1,
            bytes_written: b"module bytes".len() as u64,
        }
    );
}

#[tokio::test]
async fn checksum_mismatch_is_failed_precondition_naming_both_digests() {
    let data = tempfile::tempdir().unwrap();
    let fetcher = fetcher(data.path(), vec![]);
    let wrong = "0".repeat(64);
    let error = fetcher
        .fetch("data:;base64,aGVsbG8=", &wrong)
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::FailedPrecondition);
    assert!(error.message.contains(&wrong));
    assert!(error.message.contains(&sha256_hex(b"hello")));
}

#[tokio::test]
async fn files_outside_roots_are_permission_denied() {
    let data = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let fetcher = fetcher(data.path(), vec![root.path().to_path_buf()]);
    let error = fetcher.fetch("file:///etc/passwd", "").await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::PermissionDenied);
}

#[tokio::test]
async fn oversized_artifacts_are_resource_exhausted() {
    let data = tempfile::tempdir().unwrap();
    let fetcher = fetcher(data.path(), vec![]);
    let big = base64_encode(&[7u8; 2000]);
    let error = fetcher
        .fetch(&format!("data:;base64,{big}"), "")
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::ResourceExhausted);
    assert!(error.message.contains("max_artifact_bytes"));
}

#[tokio::test]
async fn http_retries_server_errors_then_succeeds() {
    let data = tempfile::tempdir().unwrap();
    let fetcher = fetcher(data.path(), vec![]);
    let (url, requests) = serve(vec![503, 200], b"served").await;
    let fetched = fetcher.fetch(&url, "").await.unwrap();
    assert_eq!(&fetched.bytes[..], b"served");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn http_client_errors_are_not_retried() {
    let data = tempfile::tempdir().unwrap();
    let fetcher = fetcher(data.path(), vec![]);
    let (url, requests) = serve(vec![404], b"").await;
    let error = fetcher.fetch(&url, "").await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::FailedPrecondition);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unreachable_servers_are_unavailable_after_retries() {
    let data = tempfile::tempdir().unwrap();
    let fetcher = fetcher(data.path(), vec![]);
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = fetcher
        .fetch(&format!("http://127.0.0.1:{port}/x"), "")
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unavailable);
    assert!(error.message.contains("3 attempts"));
}

#[tokio::test]
async fn concurrent_fetches_of_one_location_share_one_download() {
    let data = tempfile::tempdir().unwrap();
    let fetcher = fetcher(data.path(), vec![]);
    let (url, requests) = serve(vec![200], b"shared").await;
    // Not spawned: `join_all` polls all eight in its first poll, and a fetch without a checksum
    // joins (or starts) the single flight before its first await, so all eight are in flight
    // together before the one download can end, however the machine schedules.
    let fetches = (0..8).map(|_| fetcher.fetch(&url, ""));
    for fetch in futures::future::join_all(fetches).await {
        assert_eq!(&fetch.unwrap().bytes[..], b"shared");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    let stats = fetcher.cache_stats();
    assert_eq!(
        (stats.misses, stats.bytes_written),
        (1, 6),
        "one shared read: {stats:?}"
    );
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
