//! Test guest: a perfectly good component, of a world that is not
//! `wasmgate:device/app`. Deploying it must be refused.

wit_bindgen::generate!({
    inline: "
        package test:other;
        world other {
            export run: func() -> u32;
        }
    ",
});

struct NotAnApp;

impl Guest for NotAnApp {
    fn run() -> u32 {
        42
    }
}

export!(NotAnApp);
