//! `wasmgate-guest-tool`: the component plumbing the non-Rust guests need,
//! from the Bytecode Alliance's library crates, so that no guest build has to
//! `cargo install wasm-tools wit-bindgen-cli`.
//!
//! ```text
//! wasmgate-guest-tool c-bindings WIT_DIR WORLD OUT_DIR
//! wasmgate-guest-tool go-bindings WIT_DIR WORLD GO_PACKAGE OUT_DIR
//! wasmgate-guest-tool embed CORE.wasm WIT_DIR WORLD -o OUT.wasm
//! wasmgate-guest-tool new CORE.wasm [--adapter reactor|command] [--realloc-via-memory-grow] -o OUT.wasm
//! wasmgate-guest-tool adapter reactor|command -o OUT.wasm
//! wasmgate-guest-tool imports COMPONENT.wasm
//! wasmgate-guest-tool check-imports COMPONENT.wasm
//! wasmgate-guest-tool version
//! ```

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
use wit_parser::Resolve;

const USAGE: &str = "usage:
  wasmgate-guest-tool c-bindings WIT_DIR WORLD OUT_DIR
  wasmgate-guest-tool go-bindings WIT_DIR WORLD GO_PACKAGE OUT_DIR
  wasmgate-guest-tool embed CORE.wasm WIT_DIR WORLD -o OUT.wasm
  wasmgate-guest-tool new CORE.wasm [--adapter reactor|command] [--realloc-via-memory-grow] -o OUT.wasm
  wasmgate-guest-tool adapter reactor|command -o OUT.wasm
  wasmgate-guest-tool imports COMPONENT.wasm
  wasmgate-guest-tool check-imports COMPONENT.wasm
  wasmgate-guest-tool version";

fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("wasmgate-guest-tool: {e:#}");
        std::process::exit(1);
    }
}

/// Split `args` into positional arguments and `-o OUT`, `--adapter KIND`
/// and boolean flags.
struct Args {
    positional: Vec<String>,
    out: Option<PathBuf>,
    adapter: Option<String>,
    realloc_via_memory_grow: bool,
}

fn parse(args: Vec<String>) -> Result<Args> {
    let mut parsed = Args {
        positional: Vec::new(),
        out: None,
        adapter: None,
        realloc_via_memory_grow: false,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-o" | "--output" => parsed.out = Some(it.next().context("-o needs a path")?.into()),
            "--adapter" => {
                parsed.adapter = Some(it.next().context("--adapter needs reactor or command")?)
            }
            "--realloc-via-memory-grow" => parsed.realloc_via_memory_grow = true,
            _ if arg.starts_with('-') => bail!("unknown option {arg}\n{USAGE}"),
            _ => parsed.positional.push(arg),
        }
    }
    Ok(parsed)
}

fn run(args: Vec<String>) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    let args = parse(rest.to_vec())?;
    let out = || args.out.clone().context("-o OUT is required");
    match (command.as_str(), args.positional.as_slice()) {
        ("c-bindings", [wit, world, dir]) => c_bindings(Path::new(wit), world, Path::new(dir)),
        ("go-bindings", [wit, world, package, dir]) => {
            go_bindings(Path::new(wit), world, package, Path::new(dir))
        }
        ("embed", [core, wit, world]) => embed(Path::new(core), Path::new(wit), world, &out()?),
        ("new", [core]) => new(
            Path::new(core),
            args.adapter.as_deref(),
            args.realloc_via_memory_grow,
            &out()?,
        ),
        ("adapter", [kind]) => write(&out()?, adapter(kind)?),
        ("imports", [component]) => {
            for name in imports(Path::new(component))? {
                println!("{name}");
            }
            Ok(())
        }
        ("check-imports", [component]) => check_imports(Path::new(component)),
        ("version", []) => {
            println!(
                "wasmgate-guest-tool {} (wit-component 0.262.0, wit-bindgen-c 0.63.0, wit-bindgen-go 0.63.0 with {}, wasmtime 48.0.8 adapters)",
                env!("CARGO_PKG_VERSION"),
                wit_bindgen_go::remote_pkg_version()
            );
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn resolve(wit: &Path, world: &str) -> Result<(Resolve, wit_parser::WorldId)> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_path(wit)
        .with_context(|| format!("cannot parse the WIT in {}", wit.display()))?;
    let world = resolve
        .select_world(&[package], Some(world))
        .with_context(|| format!("no world {world} in {}", wit.display()))?;
    Ok((resolve, world))
}

/// wit-bindgen's C generator: `<world>.h`, `<world>.c` and
/// `<world>_component_type.o` in `dir`.
fn c_bindings(wit: &Path, world: &str, dir: &Path) -> Result<()> {
    let (mut resolve, world) = resolve(wit, world)?;
    let mut files = wit_bindgen_core::Files::default();
    let opts = wit_bindgen_c::Opts::default();
    opts.build()
        .generate(&mut resolve, world, &mut files)
        .context("wit-bindgen-c failed")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, contents) in files.iter() {
        write(&dir.join(name), contents)?;
    }
    Ok(())
}

/// wit-bindgen's Go generator, for the library package `package` (a Go
/// import path), and the Go package its output imports:
///
/// - `dir/bindings`: the module `package`, with `imports/<interface>` (the
///   WIT types and the imported functions) and `exports/wit_exports` (the
///   `//go:wasmexport` functions, which call the functions the app's own
///   package `package/exports/export_wit_world` declares);
/// - `dir/go-pkg`: the module `go.bytecodealliance.org/pkg` (`wit/runtime`:
///   `cabi_realloc` and handles; `wit/types`: `Option`, `Result`, tuples).
///
/// Both are replaced wholesale, so nothing of an older WIT stays behind.
/// `gofmt` formats the bindings if it is on PATH.
fn go_bindings(wit: &Path, world: &str, package: &str, dir: &Path) -> Result<()> {
    let (mut resolve, world) = resolve(wit, world)?;
    let mut files = wit_bindgen_core::Files::default();
    let opts = wit_bindgen_go::Opts {
        pkg_name: Some(package.to_string()),
        // Its only warnings are renames, which the generated code documents;
        // without `quiet` it prints an empty line on every run.
        quiet: true,
        ..Default::default()
    };
    opts.build()
        .generate(&mut resolve, world, &mut files)
        .context("wit-bindgen-go failed")?;

    let bindings = dir.join("bindings");
    clear(&bindings)?;
    for (name, contents) in files.iter() {
        write_in(&bindings, name, contents)?;
    }
    // The bindings' own go.mod: `package` is a module of its own, so that a
    // guest's go.mod can `replace` it with this directory. The Go version is
    // the runtime package's (it needs `//go:wasmexport` and `runtime.Pinner`).
    let remote = wit_bindgen_go::remote_pkg_version();
    let go_version = GO_PKG
        .iter()
        .find(|(name, _)| *name == "go.mod")
        .and_then(|(_, text)| std::str::from_utf8(text).ok())
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix("go ")))
        .context("wit-bindgen-go's Go package has no go line in its go.mod")?;
    write_in(
        &bindings,
        "go.mod",
        format!("module {package}\n\ngo {go_version}\n\nrequire {remote}\n").as_bytes(),
    )?;

    let runtime = dir.join("go-pkg");
    clear(&runtime)?;
    for (name, contents) in GO_PKG {
        write_in(&runtime, name, contents)?;
    }
    Ok(())
}

// The Go package wit-bindgen-go ships (build.rs).
include!(concat!(env!("OUT_DIR"), "/go_pkg.rs"));

/// Remove `dir` and everything in it, if it is there.
fn clear(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Write `contents` to `dir/name`, making the folders on the way.
fn write_in(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    write(&path, contents)
}

/// Embed the world's type information (UTF-8 strings) into a core module.
fn embed(core: &Path, wit: &Path, world: &str, out: &Path) -> Result<()> {
    let (resolve, world) = resolve(wit, world)?;
    let mut module = read(core)?;
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8, false)
        .context("cannot embed the component type")?;
    write(out, &module)
}

fn adapter(kind: &str) -> Result<&'static [u8]> {
    match kind {
        "reactor" => Ok(WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER),
        "command" => Ok(WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER),
        _ => bail!("unknown adapter {kind}: reactor or command"),
    }
}

/// Make a component of a core module that has its WIT embedded.
fn new(
    core: &Path,
    adapter_kind: Option<&str>,
    realloc_via_memory_grow: bool,
    out: &Path,
) -> Result<()> {
    let module = read(core)?;
    let mut encoder = ComponentEncoder::default();
    encoder
        .validate(true)
        .realloc_via_memory_grow(realloc_via_memory_grow)
        .module(&module)?;
    if let Some(kind) = adapter_kind {
        encoder.adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter(kind)?)?;
    }
    let component = encoder.encode().context("cannot make the component")?;
    write(out, &component)
}

/// The component's imports (interfaces and world-level types), in order.
fn imports(component: &Path) -> Result<Vec<String>> {
    let bytes = read(component)?;
    let mut names = Vec::new();
    let mut depth = 0u32;
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        match payload? {
            // Only the outer component's imports, not those of nested ones.
            wasmparser::Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    names.push(import?.name.name.to_string());
                }
            }
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(names)
}

/// What the gateway links for guests (host/src/wasi.rs and the WIT package):
/// a component importing anything else does not start.
const LINKED: &[&str] = &[
    "wasmgate:device/types@0.1",
    "wasmgate:device/device@0.1",
    "wasmgate:device/storage@0.1",
    "wasmgate:device/log@0.1",
    "wasmgate:device/content@0.1",
    "wasmgate:device/modbus@0.1",
    "wasmgate:device/serial@0.1",
    "wasmgate:device/bus@0.1",
    "wasmgate:device/tables@0.1",
    // The standard interfaces, on the app's log and config (wit/standard.wit).
    "wasi:logging/logging@0.1.0-draft",
    "wasi:config/store@0.2.0-draft",
    "wasi:config/store@0.2.0-draft-2024-09-27",
    "wasi:config/store@0.2.0-rc.1",
    "wasi:keyvalue/store@0.2.0-draft",
    "wasi:keyvalue/atomics@0.2.0-draft",
    "wasi:keyvalue/batch@0.2.0-draft",
    "wasi:keyvalue/store@0.2.0-draft2",
    "wasi:keyvalue/atomics@0.2.0-draft2",
    "wasi:keyvalue/batch@0.2.0-draft2",
    "wasi:http/types@0.2",
    "wasi:http/outgoing-handler@0.2",
    "wasi:io/error@0.2",
    "wasi:io/poll@0.2",
    "wasi:io/streams@0.2",
    "wasi:clocks/monotonic-clock@0.2",
    "wasi:clocks/wall-clock@0.2",
    "wasi:random/random@0.2",
    "wasi:random/insecure@0.2",
    "wasi:random/insecure-seed@0.2",
    "wasi:cli/exit@0.2",
    "wasi:cli/environment@0.2",
    "wasi:cli/stdin@0.2",
    "wasi:cli/stdout@0.2",
    "wasi:cli/stderr@0.2",
    "wasi:cli/terminal-input@0.2",
    "wasi:cli/terminal-output@0.2",
    "wasi:cli/terminal-stdin@0.2",
    "wasi:cli/terminal-stdout@0.2",
    "wasi:cli/terminal-stderr@0.2",
    "wasi:filesystem/types@0.2",
    "wasi:filesystem/preopens@0.2",
    // Linked (CPython imports them whether it uses them or not); a guest
    // reaches only the TCP addresses it was granted.
    "wasi:sockets/network@0.2",
    "wasi:sockets/instance-network@0.2",
    "wasi:sockets/tcp@0.2",
    "wasi:sockets/tcp-create-socket@0.2",
    "wasi:sockets/udp@0.2",
    "wasi:sockets/udp-create-socket@0.2",
    "wasi:sockets/ip-name-lookup@0.2",
];

/// Fail, naming them, if the component imports interfaces the gateway does not link.
fn check_imports(component: &Path) -> Result<()> {
    let unlinked: Vec<String> = imports(component)?
        .into_iter()
        .filter(|name| name.contains(':'))
        .filter(|name| {
            !LINKED.iter().any(|l| {
                name.strip_prefix(l)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
        })
        .collect();
    if unlinked.is_empty() {
        return Ok(());
    }
    bail!(
        "{} imports what the gateway does not give guests: {}",
        component.display(),
        unlinked.join(", ")
    )
}
