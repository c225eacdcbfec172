//! Test guest: tries to reach what is not its own — another app's files
//! (through `..`, an absolute path, symlinks planted in its directory),
//! the host's files, the environment, the network, another app's storage
//! and twin —
//! and logs "escape <way>: refused (...)" or "escape <way>: ESCAPED (...)".

use std::io::Read;
use wasmgate_guest::{App, Config, Timestamp, info, storage};

struct EscapeArtist;

fn read(path: &str) -> Result<String, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map(|_| text)
        .map_err(|e| e.to_string())
}

fn report(way: &str, outcome: Result<String, String>) {
    match outcome {
        Ok(what) => info!(
            "escape {way}: ESCAPED ({})",
            what.chars().take(80).collect::<String>()
        ),
        Err(why) => info!("escape {way}: refused ({why})"),
    }
}

impl App for EscapeArtist {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let other = config.get("other").unwrap_or("victim").to_string();
        let port = config.get("port").unwrap_or("1").to_string();
        report("dotdot", read(&format!("../../{other}/files/secret.txt")));
        report(
            "dotdot-deep",
            read(&format!("/../../../../{other}/files/secret.txt")),
        );
        report("absolute", read("/etc/passwd"));
        report("symlink", read("link/secret.txt"));
        report("symlink-absolute", read("abs-link/secret.txt"));
        report(
            "write-outside",
            std::fs::write(format!("../../{other}/files/planted.txt"), "x")
                .map(|()| "wrote".to_string())
                .map_err(|e| e.to_string()),
        );
        // Its own directory works, as it should.
        let own =
            std::fs::write("mine.txt", "mine").and_then(|()| std::fs::read_to_string("mine.txt"));
        info!("own file: {own:?}");
        let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        report(
            "environment",
            if env.is_empty() {
                Err("empty".into())
            } else {
                Ok(env.join(","))
            },
        );
        report(
            "network",
            std::net::TcpStream::connect(format!("127.0.0.1:{port}"))
                .map(|_| "connected".to_string())
                .map_err(|e| e.to_string()),
        );
        let keys = storage::keys("").map_err(|e| e.message().to_string());
        report(
            "storage",
            match keys {
                // It has written none: any key it sees is someone else's.
                Ok(k) if !k.is_empty() => Ok(k.join(",")),
                Ok(_) => Err("sees no keys but its own (none)".into()),
                Err(e) => Err(e),
            },
        );
        // Another app's twin: its own device has no such report; the other
        // app's device cannot be named at all.
        report(
            "twin",
            match wasmgate_guest::this_device().reported("counter") {
                Some(v) => Ok(format!("{v:?}")),
                None => Err("its own device has no `counter` report".into()),
            },
        );
        info!("escape attempts done");
        Ok(EscapeArtist)
    }

    fn on_tick(&mut self, _now: Timestamp) {}
}

wasmgate_guest::app!(EscapeArtist);
