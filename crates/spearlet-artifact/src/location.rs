//! Parsing `ArtifactSpec.location` and `ArtifactSpec.checksum`.

use std::path::PathBuf;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use spearlet_core::{SpearError, SpearResult};

/// Where an artifact's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactLocation {
    /// `file:///abs/path`: a file on this node, under an allowed root.
    File(PathBuf),
    /// `http://…` or `https://…`.
    Http(String),
    /// `data:[<media type>];base64,<bytes>`: the artifact inline.
    Data(Vec<u8>),
    /// `artifact://sha256:<hex>`: content already in the node's cache (uploaded earlier).
    Cached(String),
}

impl ArtifactLocation {
    pub fn parse(location: &str) -> SpearResult<ArtifactLocation> {
        if location.is_empty() {
            return Err(SpearError::invalid_argument(
                "artifact_spec.location must not be empty",
            ));
        }
        if let Some(path) = location.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(SpearError::invalid_argument(format!(
                    "artifact_spec.location {location:?}: file:// locations need an absolute \
                     path (file:///abs/path)"
                )));
            }
            return Ok(ArtifactLocation::File(PathBuf::from(path)));
        }
        if location.starts_with("http://") || location.starts_with("https://") {
            return Ok(ArtifactLocation::Http(location.to_owned()));
        }
        if let Some(rest) = location.strip_prefix("data:") {
            let Some((media_type, payload)) = rest.split_once(',') else {
                return Err(SpearError::invalid_argument(
                    "artifact_spec.location: a data: URL needs a comma before its payload",
                ));
            };
            if !media_type.ends_with(";base64") {
                return Err(SpearError::invalid_argument(
                    "artifact_spec.location: data: URLs must be base64 (data:…;base64,…)",
                ));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(payload.trim())
                .map_err(|error| {
                    SpearError::invalid_argument(format!(
                        "artifact_spec.location: the data: URL is not valid base64: {error}"
                    ))
                })?;
            return Ok(ArtifactLocation::Data(bytes));
        }
        if let Some(checksum) = location.strip_prefix("artifact://") {
            let digest = parse_checksum(checksum)
                .map_err(|error| error.context("artifact_spec.location"))?;
            let Some(digest) = digest else {
                return Err(SpearError::invalid_argument(
                    "artifact_spec.location: artifact:// needs a sha256 digest",
                ));
            };
            return Ok(ArtifactLocation::Cached(digest));
        }
        let scheme = location
            .split_once(':')
            .map_or(location, |(scheme, _)| scheme);
        Err(SpearError::invalid_argument(format!(
            "artifact_spec.location: unsupported scheme {scheme:?}; supported are file://, \
             http://, https://, data: and artifact://"
        )))
    }
}

/// Parses `sha256:<hex>` or bare hex into lowercase hex; empty means "not given".
pub fn parse_checksum(checksum: &str) -> SpearResult<Option<String>> {
    let checksum = checksum.trim();
    if checksum.is_empty() {
        return Ok(None);
    }
    let hex_digits = checksum.strip_prefix("sha256:").unwrap_or(checksum);
    let valid = hex_digits.len() == 64 && hex_digits.chars().all(|c| c.is_ascii_hexdigit());
    if !valid {
        return Err(SpearError::invalid_argument(format!(
            "artifact_spec.checksum {checksum:?} is not a sha256 digest (sha256:<64 hex digits>)"
        )));
    }
    Ok(Some(hex_digits.to_ascii_lowercase()))
}

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spearlet_core::ErrorKind;

    #[test]
    fn locations_parse_by_scheme() {
        assert_eq!(
            ArtifactLocation::parse("file:///srv/a.wasm").unwrap(),
            ArtifactLocation::File("/srv/a.wasm".into())
        );
        assert_eq!(
            ArtifactLocation::parse("https://example.invalid/a.wasm").unwrap(),
            ArtifactLocation::Http("https://example.invalid/a.wasm".into())
        );
        assert_eq!(
            ArtifactLocation::parse("data:application/wasm;base64,AGFzbQ==").unwrap(),
            ArtifactLocation::Data(b"\0asm".to_vec())
        );
        let digest = "ab".repeat(32);
        assert_eq!(
            ArtifactLocation::parse(&format!("artifact://sha256:{digest}")).unwrap(),
            ArtifactLocation::Cached(digest)
        );
    }

    #[test]
    fn bad_locations_are_invalid_arguments() {
        for location in [
            "",
            "ftp://x/y",
            "file://relative/path",
            "data:text/plain,hello",
            "data:;base64,!!!",
            "artifact://nope",
        ] {
            let error = ArtifactLocation::parse(location).unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidArgument, "{location}");
            assert!(
                error.message.contains("artifact_spec.location"),
                "{location}"
            );
        }
    }

    #[test]
    fn checksums_accept_prefixed_and_bare_hex() {
        let digest = "AB".repeat(32);
        assert_eq!(
            parse_checksum(&format!("sha256:{digest}")).unwrap(),
            Some("ab".repeat(32))
        );
        assert_eq!(parse_checksum(&digest).unwrap(), Some("ab".repeat(32)));
        assert_eq!(parse_checksum("").unwrap(), None);
        assert!(parse_checksum("sha256:123").is_err());
        assert!(parse_checksum("md5:abc").is_err());
    }
}
