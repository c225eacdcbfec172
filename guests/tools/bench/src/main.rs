//! `wasmgate-guest-bench COMPONENT.wasm...`: for each thermostat component,
//! the time to compile it, to instantiate it and run `init`, and the time of
//! one `on-tick` call (median, mean and 99th percentile of many), with the
//! gateway's wasmtime version and engine settings (epoch interruption on)
//! but in-memory stand-ins for the host's device, storage and log, so that
//! the numbers are the guest's own cost plus the canonical ABI's.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Result, Store, ensure, format_err};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../../../wit",
    world: "app",
    with: { "wasmgate:device/device.device": DeviceRes },
});

use wasmgate::device::types::{Error, Point, Severity, Time};

/// The one device of the bench.
pub struct DeviceRes;

struct Ctx {
    wasi: WasiCtx,
    table: ResourceTable,
    kv: HashMap<String, Vec<u8>>,
    reported: HashMap<String, Value>,
    points: u64,
    lines: u64,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmgate::device::types::Host for Ctx {}

impl wasmgate::device::device::Host for Ctx {
    fn this_device(&mut self) -> Resource<DeviceRes> {
        self.table.push(DeviceRes).expect("a device handle")
    }
    fn register(
        &mut self,
        _hardware_id: String,
        _model: String,
        _metadata: Vec<(String, String)>,
    ) -> Result<Resource<DeviceRes>, Error> {
        Ok(self.table.push(DeviceRes).expect("a device handle"))
    }
    fn unregister(&mut self, _hardware_id: String) -> Result<(), Error> {
        Ok(())
    }
}

impl wasmgate::device::device::HostDevice for Ctx {
    fn id(&mut self, _: Resource<DeviceRes>) -> String {
        "thermostat".into()
    }
    fn report(&mut self, _: Resource<DeviceRes>, attributes: Fields) -> Result<(), Error> {
        self.reported.extend(attributes);
        Ok(())
    }
    fn reported(&mut self, _: Resource<DeviceRes>, name: String) -> Option<Value> {
        self.reported.get(&name).cloned()
    }
    fn desired(&mut self, _: Resource<DeviceRes>, _name: String) -> Option<Value> {
        Some(Value::Number(21.0))
    }
    fn record(
        &mut self,
        _: Resource<DeviceRes>,
        _: String,
        _: Option<Time>,
        _: Fields,
    ) -> Result<(), Error> {
        self.points += 1;
        Ok(())
    }
    fn record_batch(
        &mut self,
        _: Resource<DeviceRes>,
        _: String,
        points: Vec<Point>,
    ) -> Result<(), Error> {
        self.points += points.len() as u64;
        Ok(())
    }
    fn alert(
        &mut self,
        _: Resource<DeviceRes>,
        _: String,
        _: Severity,
        _: Fields,
    ) -> Result<(), Error> {
        Ok(())
    }
    fn drop(&mut self, rep: Resource<DeviceRes>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl wasmgate::device::storage::Host for Ctx {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.kv.get(&key).cloned())
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), Error> {
        self.kv.insert(key, value);
        Ok(())
    }
    fn delete(&mut self, key: String) -> Result<(), Error> {
        self.kv.remove(&key);
        Ok(())
    }
    fn keys(&mut self, prefix: String) -> Result<Vec<String>, Error> {
        Ok(self
            .kv
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect())
    }
}

impl wasmgate::device::log::Host for Ctx {
    fn log(&mut self, _: wasmgate::device::log::Level, _: String) {
        self.lines += 1;
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> Result<()> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    ensure!(
        !paths.is_empty(),
        "usage: wasmgate-guest-bench COMPONENT.wasm..."
    );
    let ticks: usize = std::env::var("TICKS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2000);

    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    let engine = Engine::new(&config)?;
    let mut linker: Linker<Ctx> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    App::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;

    println!(
        "| component | size | compile | instantiate + init | on-tick median | on-tick mean | on-tick p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for path in paths {
        let size = std::fs::metadata(&path)
            .map_err(|e| format_err!("{path}: {e}"))?
            .len();
        let started = Instant::now();
        let component =
            Component::from_file(&engine, &path).map_err(|e| format_err!("{path}: {e}"))?;
        let compile = started.elapsed();
        let pre = linker.instantiate_pre(&component)?;

        let mut store = Store::new(
            &engine,
            Ctx {
                wasi: WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
                kv: HashMap::new(),
                reported: HashMap::new(),
                points: 0,
                lines: 0,
            },
        );
        store.set_epoch_deadline(u64::MAX / 2);
        let config = vec![
            ("start_temperature".to_string(), "19".to_string()),
            ("seed".to_string(), "42".to_string()),
        ];
        let started = Instant::now();
        let instance = pre.instantiate(&mut store)?;
        let app = App::new(&mut store, &instance)?;
        app.call_init(&mut store, &config, None)?
            .map_err(|e| format_err!("init failed: {e}"))?;
        let init = started.elapsed();

        let mut times = Vec::with_capacity(ticks);
        for i in 0..(ticks + ticks / 10) {
            let started = Instant::now();
            app.call_on_tick(&mut store, 1_800_000_000_000_000_000 + i as u64)?;
            if i >= ticks / 10 {
                times.push(started.elapsed());
            }
        }
        ensure!(
            store.data().points == (ticks + ticks / 10) as u64,
            "{path}: expected a point per tick"
        );
        times.sort();
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        let name = path.rsplit("guests/").next().unwrap_or(&path);
        println!(
            "| {name} | {:.0} KiB | {:.0} ms | {:.2} ms | {:.1} µs | {:.1} µs | {:.1} µs |",
            size as f64 / 1024.0,
            compile.as_secs_f64() * 1e3,
            init.as_secs_f64() * 1e3,
            micros(times[times.len() / 2]),
            micros(mean),
            micros(times[times.len() * 99 / 100]),
        );
    }
    Ok(())
}
