//! The wasmtime engine every app shares: component model, async on tokio,
//! epoch interruption (the clock behind per-call deadlines), the linker with
//! every host interface, and the on-disk compile cache.
//!
//! The compile cache keeps each compiled component in `<data dir>/cache`,
//! keyed by the sha256 of the component and by the engine's compatibility
//! hash, so a restart with unchanged components loads native code instead of
//! compiling (milliseconds instead of seconds for a large guest).
//!
//! Apps of the same component share one loaded copy of it: its code and
//! metadata are in memory once, however many apps run it (see
//! [`Runtime::load_bytes`]).

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::app::{AppCtx, Prepared};
use crate::bindings::AppPre;
use crate::wire::protocol::Load;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// How often the epoch advances: the granularity of call deadlines, and how
/// often a busy guest yields to the other tasks on its thread.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine, the linker and the compile cache.
pub struct Runtime {
    engine: Engine,
    linker: Linker<AppCtx>,
    cache_dir: PathBuf,
    ticker_stop: Arc<AtomicBool>,
    /// The components loaded and still held by an app version, by digest,
    /// with how each was made ready.
    loaded: Mutex<HashMap<String, (Weak<Prepared>, Load)>>,
    /// The wasmgate executable that compiles components in a child process
    /// (see [`Runtime::compiling_in_child`]); `None` compiles in this one.
    #[cfg(feature = "compiler")]
    child_compiler: Option<PathBuf>,
}

/// The engine settings. `wasmgate compile` uses the same, so that its
/// artifacts load on a gateway.
fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config
}

/// Precompile a component for `target` (a target triple, e.g.
/// `aarch64-unknown-linux-gnu`; the host's if `None`): an artifact a
/// gateway of the same wasmgate version loads without compiling, even a
/// runtime-only one.
#[cfg(feature = "compiler")]
pub fn precompile(bytes: &[u8], target: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let mut config = engine_config();
    if let Some(target) = target {
        config.target(target).map_err(anyhow::Error::from)?;
    }
    let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
    engine
        .precompile_component(bytes)
        .map_err(anyhow::Error::from)
        .context("compiling the component")
}

/// A component's sha256, hex: the name it is loaded, cached and kept under.
pub fn component_digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A component ready to instantiate.
pub struct Loaded {
    /// Shared by every app version of this component.
    pub pre: Arc<Prepared>,
    /// sha256 of the component file, hex.
    pub digest: String,
    /// How the component was made ready when it was first loaded.
    pub source: Load,
    /// It was already loaded for another app version, and is shared.
    pub shared: bool,
    pub elapsed: Duration,
}

impl Runtime {
    /// Build the engine and linker, and start the epoch ticker.
    pub fn new(cache_dir: &Path) -> anyhow::Result<Runtime> {
        let engine = Engine::new(&engine_config()).map_err(anyhow::Error::from)?;

        let mut linker = Linker::new(&engine);
        crate::app::add_to_linker(&mut linker)?;

        std::fs::create_dir_all(cache_dir)
            .with_context(|| format!("creating the compile cache {}", cache_dir.display()))?;
        remove_temporaries(cache_dir);

        crate::value::refresh_wall_offset();
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticker_engine, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                    crate::value::refresh_wall_offset();
                }
            })?;

        Ok(Runtime {
            engine,
            linker,
            cache_dir: cache_dir.to_path_buf(),
            ticker_stop,
            loaded: Mutex::default(),
            #[cfg(feature = "compiler")]
            child_compiler: None,
        })
    }

    /// Compile components in a child process, `executable compile
    /// COMPONENT --output ARTIFACT` (wasmgate's own `compile` command, which
    /// builds its engine with the same settings), and load the artifact from
    /// the compile cache as a restart would. Cranelift's heap and code then
    /// never become part of the gateway's resident memory, which kept about
    /// 8 MiB of both after a start that compiled (BENCHMARKS.md, P6). If the
    /// child cannot compile the component, the gateway compiles it itself:
    /// an invalid component gets the same error either way.
    #[cfg(feature = "compiler")]
    pub fn compiling_in_child(mut self, executable: PathBuf) -> Runtime {
        self.child_compiler = Some(executable);
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Load a component file (see [`Runtime::load_bytes`]).
    pub fn load(&self, path: &Path) -> anyhow::Result<Loaded> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading component {}", path.display()))?;
        self.load_bytes(&bytes)
            .with_context(|| format!("component {}", path.display()))
    }

    /// Make a component ready to instantiate: the copy already loaded if
    /// an app version holds one, else from the compile cache if this exact
    /// component was compiled by a compatible engine before, else compile
    /// and cache it. Then check that it fits the `app` world and link it.
    ///
    /// A loaded copy is shared because each holds the component's code and
    /// metadata: ten apps of a small Rust guest held ten copies, 0.35 MiB
    /// each (BENCHMARKS.md, P6), and loaded it ten times at a start.
    pub fn load_bytes(&self, bytes: &[u8]) -> anyhow::Result<Loaded> {
        self.load_hashed(bytes, &component_digest(bytes))
    }

    /// [`Runtime::load_bytes`] for bytes whose sha256 (`digest`, from
    /// [`component_digest`]) the caller has just taken: they are not hashed
    /// again.
    pub fn load_hashed(&self, bytes: &[u8], digest: &str) -> anyhow::Result<Loaded> {
        self.load_known(digest, || Ok(Cow::Borrowed(bytes)))
    }

    /// [`Runtime::load_bytes`] for a component kept under its digest (an
    /// artifact of the deployer's): `read` gives its bytes, and is called
    /// only when neither a loaded copy nor the compile cache has it; bytes
    /// read are checked against `digest`. A warm start of ten apps of one
    /// component hashed it twenty times, a tenth of the start (BENCHMARKS.md,
    /// P4).
    pub fn load_artifact(
        &self,
        digest: &str,
        read: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> anyhow::Result<Loaded> {
        self.load_known(digest, || {
            let bytes = read().context("reading the component")?;
            let found = component_digest(&bytes);
            anyhow::ensure!(
                found == digest,
                "the component kept as {digest} has sha256 {found}: it was changed or damaged on disk"
            );
            Ok(Cow::Owned(bytes))
        })
    }

    /// Load component `digest`; `read` gives its bytes when they are needed.
    fn load_known<'a>(
        &self,
        digest: &str,
        read: impl FnOnce() -> anyhow::Result<Cow<'a, [u8]>>,
    ) -> anyhow::Result<Loaded> {
        let started = Instant::now();
        let digest = digest.to_string();
        if let Some((pre, source)) = self.already_loaded(&digest) {
            return Ok(Loaded {
                pre,
                digest,
                source,
                shared: true,
                elapsed: started.elapsed(),
            });
        }
        let cached = self.cache_path(&digest);

        let mut component = None;
        if cached.exists() {
            match self.load_cached(&cached) {
                Ok(c) => component = Some((c, Load::Cache)),
                Err(e) => {
                    tracing::warn!(cache = %cached.display(), "discarded an unusable compile cache entry: {e}");
                }
            }
        }
        let (component, source) = match component {
            Some(found) => found,
            None => {
                let bytes = read()?;
                if Engine::detect_precompiled(&bytes).is_some() {
                    // SAFETY: a precompiled artifact is native code. It reaches
                    // the gateway only from its operator: gateway.toml, the admin
                    // socket (owner only) or a cloud deployment signed by a
                    // trusted key. wasmtime still checks that it was made by a
                    // compatible engine for this machine.
                    #[allow(unsafe_code)]
                    let component = unsafe { Component::deserialize(&self.engine, &bytes) }
                        .map_err(anyhow::Error::from)
                        .context("the precompiled artifact does not fit this wasmgate (another version, or another target)")?;
                    (component, Load::Precompiled)
                } else {
                    (self.compile(&bytes, &cached)?, Load::Compiled)
                }
            }
        };

        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("it imports something the gateway does not give guests")?;
        // A wasmgate app, or else a component that serves HTTP; the error
        // is the app world's, which is what most components mean to be.
        let pre = match AppPre::new(pre.clone()) {
            Ok(app) => Prepared::App(app),
            Err(not_an_app) => match ProxyPre::new(pre) {
                Ok(proxy) => Prepared::HttpProxy(proxy),
                Err(_) => {
                    return Err(anyhow::Error::from(not_an_app).context(
                        "it does not fit the wasmgate:device/app@0.1.0 world, and does not serve HTTP as a wasi:http/proxy component either",
                    ));
                }
            },
        };
        let pre = Arc::new(pre);
        self.keep_loaded(&digest, &pre, source);
        Ok(Loaded {
            pre,
            digest,
            source,
            shared: false,
            elapsed: started.elapsed(),
        })
    }

    /// The copy of component `digest` an app version still holds.
    fn already_loaded(&self, digest: &str) -> Option<(Arc<Prepared>, Load)> {
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let (pre, source) = loaded.get(digest)?;
        Some((pre.upgrade()?, *source))
    }

    /// Remember `pre` for the next load of `digest`, without keeping it
    /// alive: a component no version holds any more is dropped, and its
    /// entry with it.
    fn keep_loaded(&self, digest: &str, pre: &Arc<Prepared>, source: Load) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|_, (held, _)| held.strong_count() > 0);
        loaded.insert(digest.to_string(), (Arc::downgrade(pre), source));
    }

    #[cfg(feature = "compiler")]
    fn compile(&self, bytes: &[u8], cached: &Path) -> anyhow::Result<Component> {
        let child_failed = match &self.child_compiler {
            Some(executable) => match self.compile_in_child(executable, bytes, cached) {
                Ok(component) => return Ok(component),
                // A compiler that crashed on this component would crash the
                // gateway too.
                Err(ChildFailure::Killed(e)) => return Err(e),
                Err(ChildFailure::Failed(e)) => Some(e),
            },
            None => None,
        };
        let component = Component::from_binary(&self.engine, bytes)
            .map_err(anyhow::Error::from)
            .context("it is not a valid WebAssembly component");
        release_freed_memory();
        let component = component?;
        if let Some(e) = child_failed {
            // Only worth a warning when the gateway could compile what the
            // child could not: the child itself failed (an invalid
            // component fails both, and its error is returned above).
            tracing::warn!("compiled in the gateway: compiling in a child process failed: {e:#}");
        }
        self.store_in_cache(&component, cached);
        Ok(component)
    }

    /// Compile with `executable compile` into the cache at `cached`, then
    /// load the artifact from there.
    #[cfg(feature = "compiler")]
    fn compile_in_child(
        &self,
        executable: &Path,
        bytes: &[u8],
        cached: &Path,
    ) -> Result<Component, ChildFailure> {
        use std::os::unix::process::ExitStatusExt as _;
        let input = temporary_beside(cached, "wasm");
        let output = temporary_beside(cached, "cwasm");
        std::fs::write(&input, bytes)
            .with_context(|| format!("writing {}", input.display()))
            .map_err(ChildFailure::Failed)?;
        let run = std::process::Command::new(executable)
            .arg("compile")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output();
        let _ = std::fs::remove_file(&input);
        let run = run
            .with_context(|| format!("running {}", executable.display()))
            .map_err(ChildFailure::Failed)?;
        if !run.status.success() {
            let _ = std::fs::remove_file(&output);
            if let Some(signal) = run.status.signal() {
                return Err(ChildFailure::Killed(anyhow::anyhow!(
                    "compiling it killed the compiler (`{} compile`, signal {signal}); the \
                     gateway does not try again itself",
                    executable.display()
                )));
            }
            let stderr = String::from_utf8_lossy(&run.stderr);
            return Err(ChildFailure::Failed(anyhow::anyhow!(
                "`{} compile` {}: {}",
                executable.display(),
                run.status,
                last_line(&stderr)
            )));
        }
        std::fs::rename(&output, cached)
            .with_context(|| format!("moving the artifact to {}", cached.display()))
            .map_err(ChildFailure::Failed)?;
        self.load_cached(cached)
            .context("loading the artifact the child compiled")
            .map_err(ChildFailure::Failed)
    }

    /// The compiled component kept in the cache at `cached`. A file that
    /// does not load is deleted, so that the component is compiled again.
    fn load_cached(&self, cached: &Path) -> anyhow::Result<Component> {
        // SAFETY: `deserialize_file` trusts that the file is native code
        // this engine produced. Only the gateway's own executable writes the
        // cache (this process, or the child it compiles in), under the data
        // dir, atomically via rename, and the file name carries the engine's
        // compatibility hash; wasmtime still checks that the file was made by
        // a compatible engine.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize_file(&self.engine, cached) };
        component.map_err(|e| {
            let _ = std::fs::remove_file(cached);
            anyhow::Error::from(e)
        })
    }

    #[cfg(not(feature = "compiler"))]
    fn compile(&self, _bytes: &[u8], _cached: &Path) -> anyhow::Result<Component> {
        anyhow::bail!(
            "this wasmgate is runtime-only (built without its compiler): it runs only artifacts \
             precompiled with `wasmgate compile COMPONENT --target TRIPLE`"
        )
    }

    /// Where the compiled form of `digest` is kept; a runtime-only build
    /// compiles nothing, so it has no cache and finds nothing there.
    #[cfg(feature = "compiler")]
    fn cache_path(&self, digest: &str) -> PathBuf {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        self.cache_dir
            .join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
    }

    #[cfg(not(feature = "compiler"))]
    fn cache_path(&self, digest: &str) -> PathBuf {
        self.cache_dir
            .join(format!("{digest}-runtime-only-has-no-cache"))
    }

    #[cfg(feature = "compiler")]
    fn store_in_cache(&self, component: &Component, path: &Path) {
        let write = || -> anyhow::Result<()> {
            let bytes = component.serialize().map_err(anyhow::Error::from)?;
            let tmp = temporary_beside(path, "cwasm");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, path)?;
            Ok(())
        };
        // A cache that cannot be written costs time at the next start, not
        // correctness: say so and carry on.
        if let Err(e) = write() {
            tracing::warn!(cache = %path.display(), "could not write the compile cache: {e:#}");
        }
    }
}

/// Why a child process did not compile a component.
#[cfg(feature = "compiler")]
enum ChildFailure {
    /// It could not run, or failed, or wrote an artifact that does not
    /// load: the gateway compiles the component itself.
    Failed(anyhow::Error),
    /// A signal ended it (a crash, or the kernel's OOM killer): the
    /// component is refused.
    Killed(anyhow::Error),
}

/// The running wasmgate's own executable, for [`Runtime::compiling_in_child`]:
/// on Linux `/proc/self/exe`, which still runs this very binary after its
/// file was replaced by an upgrade (its artifacts would not load here).
#[cfg(feature = "compiler")]
pub fn own_executable() -> std::io::Result<PathBuf> {
    let this_process = Path::new("/proc/self/exe");
    if this_process.exists() {
        return Ok(this_process.to_path_buf());
    }
    std::env::current_exe()
}

/// A file name beside `path` that no other load uses at the same time (the
/// process id and a counter), ending in `extension`.
#[cfg(feature = "compiler")]
fn temporary_beside(path: &Path, extension: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_extension(format!("tmp{}-{n}.{extension}", std::process::id()))
}

/// Delete what a process that stopped while compiling left half-written in
/// the cache (names from `temporary_beside`): it is never read, and would
/// stay.
fn remove_temporaries(cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().contains(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The last line a failed child wrote: `error: ...`, with its causes.
#[cfg(feature = "compiler")]
fn last_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("(it wrote nothing)")
        .trim()
}

/// Give the heap that a compile freed back to the system. Cranelift's
/// working memory is freed when a compile ends, but glibc keeps what it
/// can resident for the next allocation, and an idle gateway then holds
/// it for good: 0.6 to 0.9 MiB after the storage-roundtrip guest (of 12.8
/// MiB anonymous with ten apps; BENCHMARKS.md, P6).
#[cfg(feature = "compiler")]
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's heap to the
    // system, under the allocator's own locks; it touches no live memory.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(all(test, feature = "compiler"))]
mod tests {
    use super::*;

    /// The smallest valid component: the preamble of an empty one.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    /// How many files `dir` holds.
    fn files_in(dir: &Path) -> usize {
        std::fs::read_dir(dir).expect("the cache dir").count()
    }

    #[test]
    fn a_component_the_child_cannot_compile_is_compiled_in_the_gateway() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = Runtime::new(dir.path())
            .expect("runtime")
            .compiling_in_child(dir.path().join("no-such-wasmgate"));
        let cached = runtime.cache_path("empty");
        runtime
            .compile(EMPTY_COMPONENT, &cached)
            .expect("compiled in the gateway");
        // The cache has the artifact and nothing the failed child left.
        assert!(cached.exists());
        assert_eq!(files_in(dir.path()), 1);
    }

    #[test]
    fn an_invalid_component_gets_the_gateways_own_error_when_the_child_fails_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = Runtime::new(dir.path())
            .expect("runtime")
            .compiling_in_child(PathBuf::from("/bin/false"));
        let cached = runtime.cache_path("invalid");
        let error = runtime
            .compile(b"\0asm\x0d\x00\x01\x00\xff", &cached)
            .expect_err("an invalid component is refused");
        assert!(
            format!("{error:#}").starts_with("it is not a valid WebAssembly component"),
            "{error:#}"
        );
        assert_eq!(files_in(dir.path()), 0);
    }

    #[test]
    fn a_component_that_kills_the_compiler_is_refused_without_compiling_it_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let crashing = dir.path().join("crashing-compiler");
        // Written by a shell, not by this process: a test thread that forks
        // while this process holds the file open for writing would make its
        // exec fail with "text file busy".
        let written = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"printf '#!/bin/sh\nkill -9 $$\n' > "$1" && chmod 700 "$1""#)
            .arg("sh")
            .arg(&crashing)
            .status()
            .expect("sh");
        assert!(written.success());
        let cache = dir.path().join("cache");
        let runtime = Runtime::new(&cache)
            .expect("runtime")
            .compiling_in_child(crashing);
        let cached = runtime.cache_path("crash");
        let error = runtime
            .compile(EMPTY_COMPONENT, &cached)
            .expect_err("refused");
        assert!(format!("{error}").contains("signal 9"), "{error}");
        // Not compiled in the gateway: nothing cached, nothing left over.
        assert_eq!(files_in(&cache), 0);
    }

    #[test]
    fn what_a_stopped_compile_left_in_the_cache_is_deleted_at_the_next_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = "abc-0123.cwasm";
        std::fs::write(dir.path().join(kept), b"artifact").expect("write");
        for left in [
            "abc-0123.tmp77-0.wasm",
            "abc-0123.tmp77-1.cwasm",
            "abc-0123.tmp78",
        ] {
            std::fs::write(dir.path().join(left), b"half").expect("write");
        }
        Runtime::new(dir.path()).expect("runtime");
        assert!(dir.path().join(kept).exists());
        assert_eq!(files_in(dir.path()), 1);
    }

    #[test]
    fn a_failed_childs_last_line_is_its_error() {
        assert_eq!(
            last_line("  Compiling\nerror: it is not valid: bad magic\n\n"),
            "error: it is not valid: bad magic"
        );
        assert_eq!(last_line(""), "(it wrote nothing)");
    }
}
