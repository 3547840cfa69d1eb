//! The container image's init path without a container engine: `docker/iptables-rootfs.sh` (the
//! Dockerfile's iptables stage) lays out iptables and its libraries as a root filesystem; the
//! test adds the tracemesh binary and the glibc it and iptables link (what the distroless
//! `cc-debian12` base provides in the image), `/dev/null`, and runs `tracemesh init` chrooted in
//! a fresh network namespace. The NAT rules it installs, read back with the image's own
//! iptables-save, show the final image can do the init container's job with nothing else.
//!
//! Needs root (chroot, mknod, network namespaces) and a Debian host with the iptables package
//! (scripts/install-test-deps.sh installs it), so it is `#[ignore]`d: `scripts/test.sh` runs it
//! with `--include-ignored` as root, and CI runs as root. Asked to run without root, it fails
//! rather than pass.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

const BIN: &str = env!("CARGO_BIN_EXE_tracemesh");

struct Root(PathBuf);

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Shared libraries `binary` loads, as absolute paths (from ldd).
fn linked(binary: &Path) -> Vec<String> {
    let out = run(Command::new("ldd").arg(binary));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "needs root: chroot, mknod, network namespaces (CI runs it as root)"]
fn the_images_iptables_file_set_runs_tracemesh_init() {
    // Ignored tests run only when asked for: without root that is a mistake, never a pass.
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root for chroot, mknod and network namespaces: \
         `sudo -E cargo test --test image -- --include-ignored`"
    );
    let root = Root(std::env::temp_dir().join(format!("tracemesh-image-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&root.0);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/iptables-rootfs.sh");
    run(Command::new("sh").arg(&script).arg(&root.0));

    // What the Dockerfile's final stage adds: the binary, and (from the base) glibc.
    let dest = root.0.join("usr/local/bin/tracemesh");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(BIN, &dest).unwrap();
    let mut libs = linked(&dest);
    for multi in ["xtables-nft-multi", "xtables-legacy-multi"] {
        libs.extend(linked(&root.0.join("usr/sbin").join(multi)));
    }
    for lib in libs {
        let target = root.0.join(lib.trim_start_matches('/'));
        if !target.exists() {
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(&lib, &target).unwrap();
        }
    }
    std::fs::create_dir_all(root.0.join("dev")).unwrap();
    run(Command::new("mknod")
        .args(["-m", "666"])
        .arg(root.0.join("dev/null"))
        .args(["c", "1", "3"]));

    // Twice, to see the rules stay one set; then read them back with the image's iptables-save.
    let script = r#"
        set -e
        chroot "$ROOT" /usr/local/bin/tracemesh init --proxy-uid 2102 --skip-outbound-ports 5432 >/dev/null
        chroot "$ROOT" /usr/local/bin/tracemesh init --proxy-uid 2102 --skip-outbound-ports 5432 >/dev/null
        chroot "$ROOT" /usr/sbin/iptables-save -t nat
    "#;
    let out = run(Command::new("unshare")
        .args(["--net", "sh", "-c", script])
        .env("ROOT", &root.0)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ));
    let saved = String::from_utf8_lossy(&out.stdout);
    assert!(
        saved.contains("(nf_tables)"),
        "the image's default backend is nft:\n{saved}"
    );
    let rules: Vec<&str> = saved.lines().filter(|l| l.starts_with("-A ")).collect();
    assert_eq!(
        rules,
        [
            "-A PREROUTING -p tcp -j TRACEMESH_INBOUND",
            "-A OUTPUT -p tcp -j TRACEMESH_OUTBOUND",
            "-A TRACEMESH_INBOUND -p tcp -m tcp --dport 4191 -j RETURN",
            "-A TRACEMESH_INBOUND -p tcp -m tcp --dport 4143 -j RETURN",
            "-A TRACEMESH_INBOUND -p tcp -m tcp --dport 4140 -j RETURN",
            "-A TRACEMESH_INBOUND -p tcp -j REDIRECT --to-ports 4143",
            "-A TRACEMESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
            "-A TRACEMESH_OUTBOUND -o lo -j RETURN",
            "-A TRACEMESH_OUTBOUND -p tcp -m tcp --dport 5432 -j RETURN",
            "-A TRACEMESH_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
        ],
        "{saved}"
    );
    // Nothing else is needed from a distro: the whole image minus the binary and glibc.
    let out = run(Command::new("du")
        .args(["-sk"])
        .arg(root.0.join("usr/sbin")));
    let kib: u64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kib < 4096, "iptables binaries take {kib} KiB");
}
