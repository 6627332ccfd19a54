//! Builds the guests in `guest/` (the Rust SDK's workspace) from source for
//! tests and labs: `cargo build --release --target wasm32-unknown-unknown`
//! with its own target directory, so it never waits on the host build's
//! lock. Cargo makes repeated builds no-ops. Tests use this instead of a
//! checked-in `.wasm`, so what they run is what the source says.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root (this crate lives in `crates/wasm`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds example `name` (`guest/examples/<name>`, package
/// `tandem-guest-<name>`) and returns the path of its `.wasm`.
pub fn build_example(name: &str) -> Result<PathBuf, String> {
    let root = repo_root();
    let guest = root.join("guest");
    let target_dir = root.join("target").join("guest");
    let package = format!("tandem-guest-{name}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&guest)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "-p",
        ])
        .arg(&package)
        .arg("--target-dir")
        .arg(&target_dir)
        // A guest build must not inherit the host build's flags (or the
        // host target's linker settings).
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .map_err(|err| format!("running cargo for {package}: {err}"))?;
    if !out.status.success() {
        return Err(format!(
            "building {package} for wasm32-unknown-unknown failed (is the target installed? scripts/install-deps.sh adds it):\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let wasm = target_dir
        .join("wasm32-unknown-unknown/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    if wasm.exists() {
        Ok(wasm)
    } else {
        Err(format!("{} was not produced", wasm.display()))
    }
}
