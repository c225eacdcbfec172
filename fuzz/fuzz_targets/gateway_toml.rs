//! Any `gateway.toml`: a checked config or an error naming the file; never
//! a panic. An accepted config is accepted again when read a second time.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use wasmgate::config::Config;

fuzz_target!(|text: &str| {
    let path = Path::new("/nonexistent/gateway.toml");
    match Config::parse(path, text) {
        Ok(config) => {
            let again = Config::parse(path, text).expect("the same text parses again");
            assert_eq!(config.gateway_id, again.gateway_id);
        }
        Err(e) => assert!(e.to_string().contains("gateway.toml"), "{e}"),
    }
});
