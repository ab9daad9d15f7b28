//! Prepares the live event console (`web/` at the repository root) for embedding: makes sure
//! socket.io-client's browser bundle is installed from `web/package-lock.json` (runs `npm ci` when
//! it is missing or not the locked version), then copies the page's files into `OUT_DIR/console/`,
//! where `src/console.rs` includes them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

/// The page's own files, served as they are.
const PAGE_FILES: [&str; 3] = ["index.html", "app.js", "style.css"];
/// socket.io-client's browser bundle, from npm.
const BUNDLE: &str = "node_modules/socket.io-client/dist/socket.io.min.js";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let web = manifest_dir.join("../../web");
    let web = web.canonicalize().unwrap_or(web);
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("console");

    for file in PAGE_FILES
        .iter()
        .chain(&["package.json", "package-lock.json", BUNDLE])
    {
        println!("cargo:rerun-if-changed={}", web.join(file).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let locked = locked_version(&web);
    if installed_version(&web).as_deref() != Some(locked.as_str()) || !web.join(BUNDLE).is_file() {
        npm_ci(&web);
    }
    match installed_version(&web) {
        Some(v) if v == locked && web.join(BUNDLE).is_file() => {}
        other => panic!(
            "`npm ci` in {} did not install socket.io-client {locked} (found {other:?})",
            web.display()
        ),
    }

    fs::create_dir_all(&out).unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
    for file in PAGE_FILES.iter().chain(&[BUNDLE]) {
        let from = web.join(file);
        let name = Path::new(file).file_name().expect("a file name");
        let to = out.join(name);
        fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", from.display(), to.display()));
    }
}

/// socket.io-client's version in `web/package-lock.json`.
fn locked_version(web: &Path) -> String {
    let path = web.join("package-lock.json");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let lock: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    lock["packages"]["node_modules/socket.io-client"]["version"]
        .as_str()
        .unwrap_or_else(|| panic!("{} does not lock socket.io-client", path.display()))
        .to_owned()
}

/// socket.io-client's version in `web/node_modules`, if installed.
fn installed_version(web: &Path) -> Option<String> {
    let text = fs::read_to_string(web.join("node_modules/socket.io-client/package.json")).ok()?;
    let package: serde_json::Value = serde_json::from_str(&text).ok()?;
    package["version"].as_str().map(str::to_owned)
}

fn npm_ci(web: &Path) {
    println!(
        "cargo:warning=installing the console's socket.io-client: npm ci in {}",
        web.display()
    );
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(web)
        // Cargo reads the build script's stdout for directives: npm's output goes to stderr.
        .stdout(std::io::stderr())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "`npm ci --no-audit --no-fund` in {} failed ({s}). The live event console needs \
             socket.io-client's browser bundle from npm; fix the error above and build again.",
            web.display()
        ),
        Err(e) => panic!(
            "cannot run `npm` ({e}). Building instantchat embeds the live event console, which \
             needs socket.io-client from npm: install Node.js and npm (e.g. `apt-get install -y \
             npm`), or run `npm ci` in {} on a machine that has it, then build again.",
            web.display()
        ),
    }
}
