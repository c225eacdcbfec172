//! Generates the Sparkplug B payload types (`proto/sparkplug_b.proto`) with
//! prost. The schema is compiled by protox, a protobuf compiler in Rust, so
//! the build needs no `protoc` on the machine.
//!
//! Release builds for x86-64 Linux also give the linker `link-order.txt`: the
//! functions an idle gateway runs, placed first in the text. Linux maps a
//! program's text 64 KiB at a time around each page it runs, so scattered
//! among the compiler's and the server's code they kept about 11 MiB of the
//! binary resident; together they keep about 6 (BENCHMARKS.md, P6).
//! `host/benches/link-order` writes the list. Only there is the linker known
//! to be LLD, Rust's default, which reads it; a function the list does not
//! name is placed after those it names, as without it. A build that links
//! with another linker (GNU ld has no such option) sets
//! `WASMGATE_LINK_ORDER=off`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/sparkplug_b.proto");
    let descriptors = protox::compile(["sparkplug_b.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;

    println!("cargo:rerun-if-changed=link-order.txt");
    let target = |key: &str| std::env::var(format!("CARGO_CFG_TARGET_{key}")).unwrap_or_default();
    println!("cargo:rerun-if-env-changed=WASMGATE_LINK_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let wanted = std::env::var("WASMGATE_LINK_ORDER").as_deref() != Ok("off");
    if release
        && wanted
        && target("ARCH") == "x86_64"
        && target("OS") == "linux"
        && target("ENV") == "gnu"
    {
        let list =
            std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR")?).join("link-order.txt");
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        // Names the list has and this build does not (code since changed,
        // or another set of features) are expected, not worth a warning.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    Ok(())
}
