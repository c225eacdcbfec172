//! The standard `wasi:config/store` on the app's config: the key/values of
//! its `[app.config]`, the same ones `init` receives. Components written
//! for Spin (`0.2.0-draft-2024-09-27`), for wasmCloud (`0.2.0-draft`) and
//! against the newest upstream WIT (`0.2.0-rc.1`) read their settings with
//! it. The three versions have the same shape; each is bound from its
//! upstream WIT (`wit/deps/config-*`) and answered by the same context.
//! Nothing else can be read through it: an app sees its own config only.

use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

use crate::capability::{AppSetup, Capability, HasCtx};

mod draft {
    wasmtime::component::bindgen!({
        path: "../wit/deps/config-draft",
        world: "wasi:config/imports",
        imports: { default: trappable },
    });
}

mod draft_2024_09_27 {
    wasmtime::component::bindgen!({
        path: "../wit/deps/config-draft-2024-09-27",
        world: "wasi:config/imports",
        imports: { default: trappable },
    });
}

mod rc1 {
    wasmtime::component::bindgen!({
        path: "../wit/deps/config-rc1",
        world: "wasi:config/imports",
        imports: { default: trappable },
    });
}

/// Per-app state: the app's config, as its instance was started with it
/// (a hot swap brings the new version's).
pub struct ConfigCtx {
    values: Arc<[(String, String)]>,
}

impl ConfigCtx {
    pub fn new(values: &[(String, String)]) -> Self {
        ConfigCtx {
            values: values.into(),
        }
    }

    fn get(&self, key: &str) -> Option<String> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn all(&self) -> Vec<(String, String)> {
        self.values.to_vec()
    }
}

struct ConfigData;

impl HasData for ConfigData {
    type Data<'a> = &'a mut ConfigCtx;
}

/// The config capability: no gateway state of its own.
pub struct ConfigStore;

impl Capability for ConfigStore {
    type Ctx = ConfigCtx;
    const NAME: &'static str = "config";

    fn instance(&self, app: &AppSetup<'_>) -> anyhow::Result<ConfigCtx> {
        Ok(ConfigCtx::new(&app.config.config))
    }

    fn add_to_linker<T: HasCtx<ConfigStore>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        draft::wasi::config::store::add_to_linker::<T, ConfigData>(linker, T::ctx)?;
        draft_2024_09_27::wasi::config::store::add_to_linker::<T, ConfigData>(linker, T::ctx)?;
        rc1::wasi::config::store::add_to_linker::<T, ConfigData>(linker, T::ctx)
    }
}

/// Each version's `Host`: the same answers. Reading the app's own config
/// cannot fail, so no `error` is ever returned.
macro_rules! store_host {
    ($($version:ident),*) => {$(
        impl $version::wasi::config::store::Host for ConfigCtx {
            fn get(
                &mut self,
                key: String,
            ) -> wasmtime::Result<Result<Option<String>, $version::wasi::config::store::Error>> {
                Ok(Ok(ConfigCtx::get(self, &key)))
            }

            fn get_all(
                &mut self,
            ) -> wasmtime::Result<
                Result<Vec<(String, String)>, $version::wasi::config::store::Error>,
            > {
                Ok(Ok(self.all()))
            }
        }
    )*};
}

store_host!(draft, draft_2024_09_27, rc1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_reads_the_apps_own_config() {
        let mut ctx = ConfigCtx::new(&[
            ("unit".to_string(), "celsius".to_string()),
            ("interval".to_string(), "5".to_string()),
        ]);
        let got = draft::wasi::config::store::Host::get(&mut ctx, "unit".into());
        assert_eq!(got.unwrap().unwrap(), Some("celsius".to_string()));
        let missing = rc1::wasi::config::store::Host::get(&mut ctx, "password".into());
        assert_eq!(missing.unwrap().unwrap(), None);
        let all = draft_2024_09_27::wasi::config::store::Host::get_all(&mut ctx);
        assert_eq!(all.unwrap().unwrap().len(), 2);
    }
}
