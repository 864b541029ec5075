//! Writes `fuzz/seeds/<target>/<name>` from the gateway's real payloads and sample replies.
//! Usage: `cargo run --example seed [out-dir]` (default `fuzz/seeds`); `seed.sh` wraps it.

use openim_callback_gateway_fuzz::{harness, payloads_dir, seeds};
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds"));
    let all = seeds(harness(), &payloads_dir());
    for target in ["decode", "reply", "status"] {
        let dir = out.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
    }
    for (target, name, bytes) in &all {
        std::fs::write(out.join(target).join(name), bytes)?;
    }
    println!("wrote {} seeds under {}", all.len(), out.display());
    Ok(())
}
