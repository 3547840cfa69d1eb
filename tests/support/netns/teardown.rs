//! What [`Net`]'s `Drop` does: on failure, print the tail of every log and the NAT rules of each
//! host that ran init; then, pass or fail, kill and reap the spawned processes, kill whatever
//! else runs in the namespaces, delete the root-side link and the namespaces, and release the
//! subnet. Logs are deleted after a pass and kept after a failure.

use std::{path::Path, process::Stdio};

use super::{Net, SUBNETS};

/// Bytes of each log printed on failure; the whole files stay in [`Net::dir`].
const LOG_TAIL_BYTES: usize = 32 * 1024;

impl Drop for Net {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            for s in &self.spawned {
                for path in [&s.stderr, &s.stdout] {
                    eprintln!("--- {} ---\n{}", path.display(), tail(path));
                }
            }
            for host in &self.inited {
                let rules = std::process::Command::new("ip")
                    .args(["netns", "exec", &self.ns(host), "iptables-save", "-c", "-t"])
                    .arg("nat")
                    .output();
                if let Ok(out) = rules {
                    let rules = String::from_utf8_lossy(&out.stdout);
                    eprintln!("--- {host} NAT rules ---\n{rules}");
                }
            }
        }
        for s in &mut self.spawned {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let quiet = |args: &[&str]| {
            let _ = std::process::Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        if let Some(link) = &self.root_link {
            quiet(&["link", "del", link]);
        }
        for ns in self.namespaces.iter().rev() {
            // Anything still running inside (a curl, a stray child of an app) goes first.
            if let Ok(out) = std::process::Command::new("ip")
                .args(["netns", "pids", ns])
                .stderr(Stdio::null())
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", pid])
                        .stderr(Stdio::null())
                        .status();
                }
            }
            quiet(&["netns", "del", ns]);
        }
        if let Ok(mut taken) = SUBNETS.lock() {
            taken.retain(|n| *n != self.subnet);
        }
        if failed {
            eprintln!("[{}] logs kept in {}", self.tag, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The last [`LOG_TAIL_BYTES`] of a log, saying how much came before.
fn tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
    let text = String::from_utf8_lossy(&bytes[start..]);
    if start == 0 {
        text.into_owned()
    } else {
        format!("[{start} bytes before this omitted]\n{text}")
    }
}
