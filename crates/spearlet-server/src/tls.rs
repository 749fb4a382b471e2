//! TLS material for both listeners, read and checked once at start.
//!
//! The same PEM certificate chain and key serve gRPC (through tonic's rustls acceptor) and the
//! HTTP gateway (through a tokio-rustls acceptor, ALPN `h2` and `http/1.1`). Files that do not
//! parse stop the node at start with INVALID_ARGUMENT naming the key, instead of failing every
//! handshake later.

use std::sync::Arc;

use spearlet_core::{SpearError, SpearResult};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// The configured certificate and key, as PEM (for tonic) and as a rustls server config (for
/// the HTTP listener).
pub struct ServerTls {
    pub certificate_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub http_config: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    pub fn load(config: &TlsConfig) -> SpearResult<ServerTls> {
        let certificate_pem = read("tls.cert_file", &config.cert_file)?;
        let key_pem = read("tls.key_file", &config.key_file)?;
        let certificates = CertificateDer::pem_slice_iter(&certificate_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| {
                SpearError::invalid_argument(format!(
                    "tls.cert_file {}: not a PEM certificate chain: {error}",
                    config.cert_file.display()
                ))
            })?;
        if certificates.is_empty() {
            return Err(SpearError::invalid_argument(format!(
                "tls.cert_file {}: holds no certificate",
                config.cert_file.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
            SpearError::invalid_argument(format!(
                "tls.key_file {}: not a PEM private key: {error}",
                config.key_file.display()
            ))
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut http_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| SpearError::internal(format!("TLS versions: {error}")))?
            .with_no_client_auth()
            .with_single_cert(certificates, key)
            .map_err(|error| {
                SpearError::invalid_argument(format!(
                    "tls.key_file {}: does not match tls.cert_file or is unsupported: {error}",
                    config.key_file.display()
                ))
            })?;
        http_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            certificate_pem,
            key_pem,
            http_config: Arc::new(http_config),
        })
    }
}

fn read(key: &str, path: &std::path::Path) -> SpearResult<Vec<u8>> {
    std::fs::read(path)
        .map_err(|error| SpearError::invalid_argument(format!("{key} {}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_and_malformed_files_are_named() {
        let directory = tempfile::tempdir().unwrap();
        let cert_file = directory.path().join("cert.pem");
        let key_file = directory.path().join("key.pem");
        let config = TlsConfig {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        };
        let error = ServerTls::load(&config).err().unwrap();
        assert!(error.message.contains("tls.cert_file"), "{}", error.message);
        std::fs::write(&cert_file, "not pem").unwrap();
        std::fs::write(&key_file, "not pem").unwrap();
        let error = ServerTls::load(&config).err().unwrap();
        assert!(error.message.contains("tls.cert_file"), "{}", error.message);
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&cert_file, generated.cert.pem()).unwrap();
        let error = ServerTls::load(&config).err().unwrap();
        assert!(error.message.contains("tls.key_file"), "{}", error.message);
        std::fs::write(&key_file, generated.signing_key.serialize_pem()).unwrap();
        assert!(ServerTls::load(&config).is_ok());
    }
}
