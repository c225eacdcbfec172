//! What `wasmgate new` copies into an app from this repository, built into
//! the binary so that it works wherever the binary is: the WIT package
//! `wasmgate:device` exactly as this build links it (`wit/`, the one
//! `bindgen!` reads the same files), and each language's SDK layer
//! (`guests/<lang>`), the files the repository's own guests are built and
//! tested with. Tests check that these lists name every file that is there.

/// `pub const NAME: &[(path, text)]`: the files at these paths under `root`
/// (relative to this file), read when the binary is built.
macro_rules! files_under {
    ($name:ident, $root:literal, [$($path:literal),* $(,)?]) => {
        pub const $name: &[(&str, &str)] = &[
            $(($path, include_str!(concat!($root, $path))),)*
        ];
    };
}

files_under!(
    WIT,
    "../../../wit/",
    [
        "app.wit",
        "bus.wit",
        "content.wit",
        "device.wit",
        "log.wit",
        "modbus.wit",
        "serial.wit",
        "standard.wit",
        "storage.wit",
        "tables.wit",
        "types.wit",
        "deps/config-draft/store.wit",
        "deps/config-draft/world.wit",
        "deps/config-draft-2024-09-27/store.wit",
        "deps/config-draft-2024-09-27/world.wit",
        "deps/config-rc1/store.wit",
        "deps/config-rc1/world.wit",
        "deps/keyvalue-draft/atomic.wit",
        "deps/keyvalue-draft/batch.wit",
        "deps/keyvalue-draft/store.wit",
        "deps/keyvalue-draft/watch.wit",
        "deps/keyvalue-draft/world.wit",
        "deps/keyvalue-draft2/atomic.wit",
        "deps/keyvalue-draft2/batch.wit",
        "deps/keyvalue-draft2/store.wit",
        "deps/keyvalue-draft2/watch.wit",
        "deps/keyvalue-draft2/world.wit",
        "deps/logging/logging.wit",
        "deps/logging/world.wit",
    ]
);

// The Rust SDK crate (its own Cargo.toml is a template: the repository's
// inherits from the guests' workspace).
files_under!(
    RUST_SDK,
    "../../../guests/rust/wasmgate-guest/src/",
    ["lib.rs", "modbus.rs", "serial.rs"]
);

files_under!(JS_SDK, "../../../guests/js/src/", ["wasmgate.js"]);

/// The npm lock of the JavaScript guests: the same componentize-js, jco and
/// preview2-shim, and everything they pull in, at the same versions.
pub const JS_LOCK: &str = include_str!("../../../guests/js/package-lock.json");

/// The package name in [`JS_LOCK`], which an app's lock replaces with its own.
pub const JS_LOCK_NAME: &str = "wasmgate-thermostat-js";

files_under!(PYTHON_SDK, "../../../guests/python/src/", ["wasmgate.py"]);

files_under!(
    C_SDK,
    "../../../guests/c/src/",
    ["wasmgate.c", "wasmgate.h"]
);

// Package `wasmgate` and the one package of the bindings left to the app
// (`wit/exports/export_wit_world`), both importing by the guests' module
// path, [`GO_MODULE`].
files_under!(
    GO_SDK,
    "../../../guests/go/",
    [
        "wasmgate/content.go",
        "wasmgate/device.go",
        "wasmgate/modbus.go",
        "wasmgate/storage.go",
        "wasmgate/wasmgate.go",
        "wit/exports/export_wit_world/export_wit_world.go",
    ]
);

/// The Go module path of the repository's guests (`guests/go/go.mod`), which
/// an app's copy of [`GO_SDK`] replaces with its own.
pub const GO_MODULE: &str = "wasmgate.example/guests/go";

files_under!(ZIG_SDK, "../../../guests/zig/src/", ["wasmgate.zig"]);

/// Where the Rust SDK's `generate!` finds the WIT in the repository, and
/// where it is in an app (the SDK is the app's `wasmgate-guest/`).
pub const RUST_SDK_WIT_PATH: (&str, &str) = ("path: \"../../../wit\"", "path: \"../wit\"");

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    fn repository() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("host/ has a parent")
            .to_path_buf()
    }

    /// Every file under `dir`, by its path relative to `dir`.
    fn files_in(dir: &Path) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(next) = pending.pop() {
            for entry in std::fs::read_dir(&next).expect("read the directory") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let relative = path.strip_prefix(dir).expect("under dir");
                    found.insert(relative.to_string_lossy().into_owned());
                }
            }
        }
        found
    }

    fn names(files: &[(&str, &str)]) -> BTreeSet<String> {
        files.iter().map(|(path, _)| path.to_string()).collect()
    }

    #[test]
    fn every_wit_file_is_embedded() {
        assert_eq!(names(WIT), files_in(&repository().join("wit")));
    }

    /// `guests/build` refuses a component that imports what its list of
    /// the gateway's interfaces lacks (guests/tools, `LINKED`), and a
    /// JavaScript component imports every interface of the world: a new
    /// interface in `wit/` must be in that list too.
    #[test]
    fn the_guest_tool_knows_every_interface_the_gateway_links() {
        let tool = std::fs::read_to_string(repository().join("guests/tools/src/main.rs"))
            .expect("the guest tool's source");
        let mut interfaces = Vec::new();
        for (path, text) in WIT.iter().filter(|(path, _)| !path.starts_with("deps/")) {
            for line in text.lines() {
                if let Some(name) = line.strip_prefix("interface ") {
                    let name = name.trim_end_matches(['{', ' ']);
                    interfaces.push((path.to_string(), name.to_string()));
                }
            }
        }
        assert!(interfaces.len() >= 9, "{interfaces:?}");
        for (path, name) in interfaces {
            let linked = format!("\"wasmgate:device/{name}@0.1\"");
            assert!(
                tool.contains(&linked),
                "wit/{path} declares interface {name}, which guests/tools/src/main.rs's LINKED lacks"
            );
        }
    }

    #[test]
    fn every_sdk_file_is_embedded() {
        let guests = repository().join("guests");
        let sources = |lang: &str, keep: &dyn Fn(&str) -> bool| -> BTreeSet<String> {
            files_in(&guests.join(lang))
                .into_iter()
                .filter(|p| keep(p))
                .collect()
        };
        assert_eq!(
            names(RUST_SDK),
            sources("rust/wasmgate-guest/src", &|_| true)
        );
        assert_eq!(
            names(GO_SDK),
            sources("go", &|p| p.starts_with("wasmgate/")
                || p.starts_with("wit/exports/"))
        );
        // The other languages' SDK is the one file beside their example apps.
        for (lang, files) in [
            ("js/src", JS_SDK),
            ("python/src", PYTHON_SDK),
            ("c/src", C_SDK),
            ("zig/src", ZIG_SDK),
        ] {
            assert_eq!(
                names(files),
                sources(lang, &|p| p.starts_with("wasmgate.")),
                "{lang}"
            );
        }
    }

    #[test]
    fn the_names_an_app_replaces_are_there() {
        let rust_lib = RUST_SDK
            .iter()
            .find(|(path, _)| *path == "lib.rs")
            .expect("lib.rs")
            .1;
        assert_eq!(rust_lib.matches(RUST_SDK_WIT_PATH.0).count(), 1);
        assert!(JS_LOCK.contains(&format!("\"name\": \"{JS_LOCK_NAME}\"")));
        let go_mod = std::fs::read_to_string(repository().join("guests/go/go.mod"))
            .expect("guests/go/go.mod");
        assert!(go_mod.starts_with(&format!("module {GO_MODULE}\n")));
        assert!(GO_SDK.iter().all(|(_, text)| text.contains(GO_MODULE)));
    }
}
