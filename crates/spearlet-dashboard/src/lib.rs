//! The web dashboard (`/ui`): hand-written HTML, CSS and JavaScript in `assets/`, compiled into
//! the binary so a node serves it with nothing beside it and nothing fetched at run time.
//!
//! Invariants:
//! - The dashboard is a client of the node's public API and nothing else: every number it shows
//!   comes from a `/v1/...` answer or the `/v1/events` stream. This crate holds no logic of the
//!   node and imports none of it.
//! - Assets are served by name from a fixed list ([`ASSET_NAMES`]); nothing else under
//!   `/ui/assets/` exists, so no path from a request reaches the file system.
//! - `SPEARLET_DASHBOARD_ASSETS_DIR` (read once, at the first request) makes the node read the
//!   same names from that directory instead, for working on the dashboard without rebuilding.
//!   It is a developer's switch; a node without it serves exactly what was compiled in.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The Content-Security-Policy every dashboard response carries: only the node's own scripts,
/// styles and API; no inline script, no other origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     style-src 'self'; script-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The page every `/ui` path serves: the app routes on the client, so links can be shared and
/// reloaded.
pub const INDEX: &str = "index.html";

/// Every asset, by the name it has under `/ui/assets/`, with its media type and bytes.
const COMPILED_ASSETS: &[(&str, &str, &[u8])] = &[
    (
        INDEX,
        "text/html; charset=utf-8",
        include_bytes!("../assets/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../assets/favicon.svg"),
    ),
];

/// The names `/ui/assets/{name}` serves.
pub const ASSET_NAMES: [&str; 4] = [INDEX, "app.js", "app.css", "favicon.svg"];

/// One asset ready to send.
pub struct Asset {
    pub content_type: &'static str,
    pub bytes: Cow<'static, [u8]>,
    /// A strong validator: the first 16 bytes of the content's SHA-256, quoted.
    pub etag: String,
}

/// The asset named `name` (one of [`ASSET_NAMES`]), or `None`.
pub fn asset(name: &str) -> Option<Asset> {
    let index = COMPILED_ASSETS
        .iter()
        .position(|(asset_name, _, _)| *asset_name == name)?;
    let (_, content_type, compiled) = COMPILED_ASSETS[index];
    if let Some(directory) = development_directory() {
        let bytes = std::fs::read(directory.join(name)).ok()?;
        return Some(Asset {
            content_type,
            etag: etag_of(&bytes),
            bytes: Cow::Owned(bytes),
        });
    }
    // The compiled-in bytes never change: their tags are hashed once, not per request.
    static COMPILED_ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    let etags = COMPILED_ETAGS.get_or_init(|| {
        COMPILED_ASSETS
            .iter()
            .map(|(_, _, bytes)| etag_of(bytes))
            .collect()
    });
    Some(Asset {
        content_type,
        bytes: Cow::Borrowed(compiled),
        etag: etags[index].clone(),
    })
}

fn etag_of(bytes: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&Sha256::digest(bytes)[..16]))
}

fn development_directory() -> Option<&'static PathBuf> {
    static DIRECTORY: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIRECTORY
        .get_or_init(|| std::env::var_os("SPEARLET_DASHBOARD_ASSETS_DIR").map(PathBuf::from))
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_is_compiled_in_and_nothing_else_is_served() {
        for name in ASSET_NAMES {
            let asset = asset(name).unwrap_or_else(|| panic!("{name} is not compiled in"));
            assert!(!asset.bytes.is_empty(), "{name} is empty");
        }
        for name in ["", "../Cargo.toml", "assets/app.js", "app.js.map", "APP.JS"] {
            assert!(asset(name).is_none(), "{name:?} must not be served");
        }
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        let index = String::from_utf8(asset(INDEX).unwrap().bytes.into_owned()).unwrap();
        for name in ["app.js", "app.css", "favicon.svg"] {
            assert!(
                index.contains(&format!("/ui/assets/{name}")),
                "index.html does not load /ui/assets/{name}"
            );
        }
        for forbidden in ["http://", "https://", "<script>", "style=\""] {
            assert!(
                !index.contains(forbidden),
                "index.html contains {forbidden:?}: no other origin, no inline code (CSP)"
            );
        }
    }
}
