//! Release builds of the `tracemesh` binary place the functions that run on the request path
//! together at the start of `.text`, in the order of `benches/hot-symbols.txt` (written by
//! `benches/hot-symbols.sh` from callgrind runs of the bench's loads). The kernel maps code in
//! 64 KiB blocks around each page fault, so scattered hot functions made 5–6 MiB of the 11 MB of
//! code resident; together (about 2 MB of functions) 2.2–2.8 MiB (BENCHMARKS.md, "Hot code
//! together").
//!
//! The option is lld's (and mold's) `--symbol-ordering-file`, which GNU ld does not have: it is
//! passed only where rustc links with its own lld by default (x86_64 Linux, glibc, rustc 1.90
//! and later) and no other linker is configured. `TRACEMESH_NO_SYMBOL_ORDER=1` turns it off.

use std::{env, path::Path, process::Command};

fn main() {
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("benches")
        .join("hot-symbols.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TRACEMESH_NO_SYMBOL_ORDER");
    if env::var_os("TRACEMESH_NO_SYMBOL_ORDER").is_some()
        || env::var("PROFILE").as_deref() != Ok("release")
        || env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var_os("RUSTC_LINKER").is_some()
        || env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("link"))
        || !rustc_links_with_lld()
        || !order.is_file()
    {
        return;
    }
    // Symbols the file names that this build does not have are skipped without a warning.
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
        order.display()
    );
}

/// Whether this rustc links x86_64 Linux binaries with its bundled lld by default (1.90+).
fn rustc_links_with_lld() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
