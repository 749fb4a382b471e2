//! Confinement of local paths to the directories an operator allowed.

use std::path::{Component, Path, PathBuf};

use spearlet_core::{SpearError, SpearResult};

/// The directories `file://` artifacts and WASI preopens may come from.
#[derive(Clone, Debug)]
pub struct AllowedRoots {
    /// Canonical (symlink-free) absolute roots.
    roots: Vec<PathBuf>,
}

impl AllowedRoots {
    /// Canonicalises each root; roots that do not exist are skipped with a warning, since
    /// nothing can be under them anyway.
    pub fn new(roots: &[PathBuf]) -> AllowedRoots {
        let roots = roots
            .iter()
            .filter_map(|root| match root.canonicalize() {
                Ok(canonical) => Some(canonical),
                Err(error) => {
                    tracing::warn!(root = %root.display(), "ignoring allowed root: {error}");
                    None
                }
            })
            .collect();
        AllowedRoots { roots }
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Resolves `path` to its canonical form if it lies under an allowed root. `field` names
    /// the request field in errors. A path outside the roots is `PermissionDenied` whether or
    /// not it exists, so the answer reveals nothing about the rest of the filesystem.
    pub fn resolve(&self, field: &str, path: &Path) -> SpearResult<PathBuf> {
        let denied = || {
            SpearError::permission_denied(format!(
                "{field}: {} is outside the allowed roots [{}]",
                path.display(),
                self.roots
                    .iter()
                    .map(|root| root.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        if !path.is_absolute() {
            return Err(SpearError::invalid_argument(format!(
                "{field}: {} is not an absolute path",
                path.display()
            )));
        }
        if path
            .components()
            .any(|component| component == Component::ParentDir)
        {
            return Err(SpearError::permission_denied(format!(
                "{field}: {} contains '..'; paths must stay inside the allowed roots",
                path.display()
            )));
        }
        if !self.roots.iter().any(|root| path.starts_with(root)) && !self.lexically_under_root(path)
        {
            return Err(denied());
        }
        // Symlinks are resolved before the final check, so a link inside a root that points
        // outside it is refused.
        let canonical = path.canonicalize().map_err(|error| {
            SpearError::invalid_argument(format!("{field}: {}: {error}", path.display()))
        })?;
        if !self.roots.iter().any(|root| canonical.starts_with(root)) {
            return Err(denied());
        }
        Ok(canonical)
    }

    /// A root given through a symlinked path (e.g. `/tmp` → `/private/tmp`) still matches the
    /// path as the client wrote it when the canonical parent lies under the root.
    fn lexically_under_root(&self, path: &Path) -> bool {
        path.parent()
            .and_then(|parent| parent.canonicalize().ok())
            .is_some_and(|parent| self.roots.iter().any(|root| parent.starts_with(root)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spearlet_core::ErrorKind;

    #[test]
    fn paths_are_confined_to_the_roots() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("ok.wasm"), b"x").unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link-out"))
            .unwrap();
        let roots = AllowedRoots::new(&[root.path().to_path_buf()]);

        assert!(
            roots
                .resolve("location", &root.path().join("ok.wasm"))
                .is_ok()
        );
        let table = [
            (outside.path().join("secret"), ErrorKind::PermissionDenied),
            (outside.path().join("missing"), ErrorKind::PermissionDenied),
            (root.path().join("../x"), ErrorKind::PermissionDenied),
            (root.path().join("link-out"), ErrorKind::PermissionDenied),
            (root.path().join("missing"), ErrorKind::InvalidArgument),
            (PathBuf::from("relative"), ErrorKind::InvalidArgument),
        ];
        for (path, kind) in table {
            let error = roots.resolve("location", &path).unwrap_err();
            assert_eq!(error.kind, kind, "{}: {}", path.display(), error.message);
            assert!(error.message.starts_with("location"));
        }
    }
}
