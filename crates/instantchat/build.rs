//! Prepares the live event console (`web/` at the repository root) for embedding: checks the
//! committed copy of socket.io-client's browser bundle against the SHA-256 recorded beside it in
//! `web/vendor/socket.io-client/source.json`, then copies the page's files and the bundle into
//! `OUT_DIR/console/`, where `src/console.rs` includes them. Nothing is downloaded and no Node.js
//! is needed: `scripts/refresh-socketio-bundle` updates the bundle (from npm, integrity checked).

use std::path::{Path, PathBuf};
use std::{env, fs};

use sha2::{Digest, Sha256};

/// The page's own files, served as they are.
const PAGE_FILES: [&str; 3] = ["index.html", "app.js", "style.css"];
/// Where the bundle, its license and its record (`source.json`) are, under `web/`.
const VENDOR: &str = "vendor/socket.io-client";
/// The bundle the page loads; its license travels with it in the repository.
const BUNDLE: &str = "socket.io.min.js";
const LICENSE: &str = "LICENSE";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let web = manifest_dir.join("../../web");
    let web = web.canonicalize().unwrap_or(web);
    let vendor = web.join(VENDOR);
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("console");

    for file in PAGE_FILES.map(|f| web.join(f)) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    for file in [BUNDLE, LICENSE, "source.json"] {
        println!("cargo:rerun-if-changed={}", vendor.join(file).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let source = read_source(&vendor);
    for file in [BUNDLE, LICENSE] {
        verify(&vendor, &source, file);
    }

    fs::create_dir_all(&out).unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
    let page = PAGE_FILES.iter().map(|f| web.join(f));
    for from in page.chain([vendor.join(BUNDLE)]) {
        let to = out.join(from.file_name().expect("a file name"));
        fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", from.display(), to.display()));
    }
}

/// `source.json`: the package version, its npm integrity and the SHA-256 of every file taken.
fn read_source(vendor: &Path) -> serde_json::Value {
    let path = vendor.join("source.json");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Refuses to build with a file that is not the one `source.json` records, so the binary never
/// serves a bundle that was edited, truncated or replaced by accident.
fn verify(vendor: &Path, source: &serde_json::Value, file: &str) {
    let path = vendor.join(file);
    let expected = source["files"][file].as_str().unwrap_or_else(|| {
        panic!(
            "{} records no SHA-256 for {file}: run scripts/refresh-socketio-bundle",
            vendor.join("source.json").display()
        )
    });
    let bytes = fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}. It is committed with the repository: restore it with `git \
             checkout -- web/{VENDOR}/{file}`, or fetch it again with \
             scripts/refresh-socketio-bundle",
            path.display()
        )
    });
    let actual: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != expected {
        panic!(
            "{} has SHA-256 {actual}, but source.json records {expected} for socket.io-client {}: \
             the file changed since it was taken from npm. Restore it (`git checkout -- web/{VENDOR}`) \
             or take it from npm again with scripts/refresh-socketio-bundle, which checks the \
             package's integrity and records the new checksum.",
            path.display(),
            source["version"].as_str().unwrap_or("(no version)"),
        );
    }
}
