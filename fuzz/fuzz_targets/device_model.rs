//! Any device model JSON: a checked model or an error; never a panic. Each
//! attribute's default of an accepted model passes the model's own check.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::model::DeviceModel;

fuzz_target!(|text: &str| {
    if let Ok(model) = DeviceModel::parse(text) {
        for name in model.attributes.keys() {
            if let Some(default) = model.attributes[name].default.as_ref() {
                // A writable attribute's default is a value the model takes.
                if model.attributes[name].writable {
                    model
                        .check_desired(name, default)
                        .unwrap_or_else(|e| panic!("{name}'s default is refused: {e}"));
                }
            }
        }
    }
});
