//! The one `bindgen!` for the `wasmgate:device/app` world (see `wit/`).
//!
//! Every import is trappable: the host implementations return a
//! `wasmtime::Result` whose `Err` traps the guest (a limit violation or a host
//! bug), while the errors a guest is expected to handle are WIT `result`s.
//! Exports are called asynchronously so that epoch interruption can yield to
//! tokio and a busy guest never blocks the other apps.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "app",
    // Device I/O waits on the network: those imports are async (the wait
    // yields to tokio, and other apps run meanwhile).
    imports: {
        "wasmgate:device/modbus": async | trappable,
        "wasmgate:device/serial": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    additional_derives: [PartialEq],
    with: {
        "wasmgate:device/device.device": crate::device::DeviceHandle,
        "wasmgate:device/serial.port": crate::serial::PortHandle,
    },
});

pub use self::wasmgate::device::types::{
    Error as GuestError, IoError, ModbusException, Point, Severity, Time,
};
