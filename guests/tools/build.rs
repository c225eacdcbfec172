//! Embed the Go package that wit-bindgen-go's output imports,
//! `go.bytecodealliance.org/pkg` (`wit/runtime`, `wit/types`, `wit/async`),
//! so that `wasmgate-guest-tool go-bindings` can write it next to the
//! bindings.
//!
//! Why: the Go build of a guest runs with GOPROXY=off, and the crate ships
//! the package (its `src/pkg`, at the version its output names) but does not
//! export it. The crate's source directory is wherever cargo unpacked it
//! (the registry cache, a vendor directory), so it is asked of
//! `cargo metadata` rather than guessed. The files are included, not
//! copied, into the binary: they are the crate's, at the locked version.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // --offline --locked: everything is already downloaded (cargo is
    // building this crate's dependencies), and the lock file must not move.
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--locked",
            "--manifest-path",
        ])
        .arg(manifest_dir.join("Cargo.toml"))
        .output()
        .expect("cannot run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata printed no JSON");
    let crate_manifest = metadata["packages"]
        .as_array()
        .expect("cargo metadata lists packages")
        .iter()
        .find(|p| p["name"] == "wit-bindgen-go")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("wit-bindgen-go is a dependency");
    let pkg = Path::new(crate_manifest)
        .parent()
        .expect("a manifest is in a directory")
        .join("src/pkg");

    // The module's go.mod and licence, and every file of its `wit` tree.
    let mut files = vec![pkg.join("go.mod"), pkg.join("LICENSE")];
    walk(&pkg.join("wit"), &mut files);
    files.sort();

    let mut rs = String::from(
        "/// The files of go.bytecodealliance.org/pkg as wit-bindgen-go ships them:\n\
         /// (path in the module, contents).\n\
         pub const GO_PKG: &[(&str, &[u8])] = &[\n",
    );
    for file in &files {
        let relative = file.strip_prefix(&pkg).expect("under src/pkg");
        let relative = relative.to_str().expect("a UTF-8 path").replace('\\', "/");
        let absolute = file.to_str().expect("a UTF-8 path");
        rs.push_str(&format!(
            "    ({relative:?}, include_bytes!({absolute:?})),\n"
        ));
        println!("cargo:rerun-if-changed={absolute}");
    }
    rs.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("go_pkg.rs"), rs).expect("cannot write go_pkg.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=build.rs");
}

/// The files under `dir`, recursively.
fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}
