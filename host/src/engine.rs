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
        })
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
            // SAFETY: `deserialize_file` trusts that the file is native code
            // this engine produced. Only this process writes the cache (under
            // the data dir, atomically via rename), and the file name carries
            // the engine's compatibility hash; a file that still fails to load
            // is removed and the component is compiled again.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(c) => component = Some((c, Load::Cache)),
                Err(e) => {
                    tracing::warn!(cache = %cached.display(), "discarding an unusable compile cache entry: {e}");
                    let _ = std::fs::remove_file(&cached);
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
        let component = Component::from_binary(&self.engine, bytes)
            .map_err(anyhow::Error::from)
            .context("it is not a valid WebAssembly component");
        release_freed_memory();
        let component = component?;
        self.store_in_cache(&component, cached);
        Ok(component)
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
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
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
