//! Checks that the embedded guests are exactly what their sources build to: rebuilds `examples/`
//! with `examples/build.sh` into a temporary directory and compares every module byte for byte
//! with the checked-in `examples/wasm/<name>.wasm`.
//!
//! Needs the `wasm32-wasip1` rustup target. Without rustup or that target the test fails under CI
//! and is skipped elsewhere, saying so on stderr (see `prerequisites`).

use std::path::{Path, PathBuf};
use std::process::Command;

use spearlet_examples::EXAMPLES;

use crate::prerequisites::missing_prerequisite;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Whether `rustup` reports the `wasm32-wasip1` target as installed; if not, why not (what
/// [`missing_prerequisite`] prints as the way to get it).
fn wasip1_target_installed() -> Result<(), String> {
    let output = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|err| format!("cannot run `rustup target list --installed`: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "`rustup target list --installed` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    if stdout.lines().any(|line| line.trim() == "wasm32-wasip1") {
        Ok(())
    } else {
        Err("rustup lists it as not installed; run `rustup target add wasm32-wasip1`".into())
    }
}

#[test]
fn embedded_guests_match_a_fresh_build() {
    if let Err(why) = wasip1_target_installed() {
        return missing_prerequisite("the wasm32-wasip1 rustup target", &why);
    }

    let out = tempfile::tempdir().expect("temp dir");
    let target = tempfile::tempdir().expect("temp dir");
    let build = Command::new("bash")
        .arg(examples_dir().join("build.sh"))
        .arg(out.path())
        .env("SPEARLET_EXAMPLES_TARGET_DIR", target.path())
        .output()
        .expect("run examples/build.sh");
    assert!(
        build.status.success(),
        "examples/build.sh failed ({}):\n{}",
        build.status,
        String::from_utf8_lossy(&build.stderr)
    );

    let mut mismatches = Vec::new();
    for example in EXAMPLES {
        let file = format!("{}.wasm", example.name);
        let built = std::fs::read(out.path().join(&file))
            .unwrap_or_else(|err| panic!("build.sh produced no {file}: {err}"));
        let committed = std::fs::read(examples_dir().join("wasm").join(&file))
            .unwrap_or_else(|err| panic!("cannot read examples/wasm/{file}: {err}"));
        if built != committed {
            mismatches.push(format!(
                "{}: examples/wasm/{file} ({} bytes) differs from a fresh build ({} bytes)",
                example.name,
                committed.len(),
                built.len()
            ));
        } else {
            // The embedded copy is compiled into this test; it must match too.
            assert!(
                example.wasm == committed.as_slice(),
                "{}: the embedded module is stale; rebuild spearlet-examples",
                example.name
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "guests not reproducible from their sources (run examples/build.sh and commit \
         examples/wasm/):\n{}",
        mismatches.join("\n")
    );
}
