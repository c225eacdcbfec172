//! Test guest: its first tick recurses without end; the stack runs out.

use wasmgate_guest::{App, Config, Timestamp, info};

struct DeepRecursion;

#[inline(never)]
fn down(n: u64, pad: [u64; 16]) -> u64 {
    // Never true in practice; it only keeps the compiler from calling the
    // recursion unconditional.
    if n == u64::MAX {
        return 0;
    }
    let mut local = pad;
    local[(n % 16) as usize] = n;
    std::hint::black_box(&local);
    down(n + 1, local) + local[0]
}

impl App for DeepRecursion {
    fn init(_config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        info!("deep-recursion started");
        Ok(DeepRecursion)
    }

    fn on_tick(&mut self, _now: Timestamp) {
        std::hint::black_box(down(0, [0; 16]));
    }
}

wasmgate_guest::app!(DeepRecursion);
