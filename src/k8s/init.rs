//! `tracemesh init`: the init container's job. Installs NAT rules in the pod's network namespace
//! so that inbound TCP reaches the proxy's inbound listener and the app's outbound TCP reaches
//! its outbound listener, without the app knowing.
//!
//! Rules live in two chains of our own, `TRACEMESH_INBOUND` (jumped to from `PREROUTING`) and
//! `TRACEMESH_OUTBOUND` (from `OUTPUT`), written with one `iptables-restore --noflush` call, so
//! they change atomically and running init twice leaves exactly one set. Skipped, in order:
//! the proxy's own UID (its connections must not loop back into it), loopback destinations
//! (an app talking to itself), the admin port (probes and Prometheus), and the configured skip
//! ports and CIDRs.
//!
//! Runs once, before the pod's containers start, so it shells out and blocks: there is no
//! runtime to block.

use std::{
    fmt::Write as _,
    io::Write as _,
    process::{Command, Stdio},
};

pub const INBOUND_CHAIN: &str = "TRACEMESH_INBOUND";
pub const OUTBOUND_CHAIN: &str = "TRACEMESH_OUTBOUND";

/// The default UID the sidecar runs as (the chart sets the same).
pub const DEFAULT_PROXY_UID: u32 = 2102;

/// What `tracemesh init` redirects and what it leaves alone.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// UID the proxy runs as; its own connections are never redirected.
    #[arg(long, env = "TRACEMESH_PROXY_UID", default_value_t = DEFAULT_PROXY_UID)]
    pub proxy_uid: u32,
    /// The proxy's inbound listener port.
    #[arg(long, env = "TRACEMESH_INBOUND_PORT", default_value_t = 4143)]
    pub inbound_port: u16,
    /// The proxy's outbound listener port.
    #[arg(long, env = "TRACEMESH_OUTBOUND_PORT", default_value_t = 4140)]
    pub outbound_port: u16,
    /// The admin port: never redirected (probes, Prometheus).
    #[arg(long, env = "TRACEMESH_ADMIN_PORT", default_value_t = 4191)]
    pub admin_port: u16,
    /// Inbound destination ports that bypass the proxy (comma-separated).
    #[arg(long, env = "TRACEMESH_SKIP_INBOUND_PORTS", value_delimiter = ',')]
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports that bypass the proxy (comma-separated).
    #[arg(long, env = "TRACEMESH_SKIP_OUTBOUND_PORTS", value_delimiter = ',')]
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destination CIDRs that bypass the proxy (comma-separated, e.g. 169.254.169.254/32).
    #[arg(long, env = "TRACEMESH_SKIP_OUTBOUND_CIDRS", value_delimiter = ',', value_parser = parse_cidr)]
    pub skip_outbound_cidrs: Vec<String>,
    /// The iptables binary (`iptables`, or `ip6tables` for the IPv6 table).
    #[arg(long, env = "TRACEMESH_IPTABLES", default_value = "iptables")]
    pub iptables: String,
}

pub(crate) fn parse_cidr(s: &str) -> Result<String, String> {
    let s = s.trim();
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?}: not an IP address or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if !len.is_empty() {
        match len.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => return Err(format!("{s:?}: prefix length must be 0..={max}")),
        }
    }
    Ok(s.to_owned())
}

/// Why the rules could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{binary} not found: the init image needs iptables")]
    Missing { binary: String },
    #[error("{binary} was refused ({detail}): the init container needs the NET_ADMIN and NET_RAW capabilities")]
    NotPermitted { binary: String, detail: String },
    #[error("{binary} failed: {detail}")]
    Failed { binary: String, detail: String },
}

/// The `iptables-restore --noflush` input for `args`. Declaring our chains flushes them, so the
/// result does not depend on what an earlier run left; the jumps from the built-in chains are
/// added only when `jumps_present` says they are missing.
pub fn ruleset(args: &InitArgs, jumps_present: (bool, bool)) -> String {
    let mut r = String::from("*nat\n");
    let _ = writeln!(r, ":{INBOUND_CHAIN} - [0:0]");
    let _ = writeln!(r, ":{OUTBOUND_CHAIN} - [0:0]");
    if !jumps_present.0 {
        let _ = writeln!(r, "-A PREROUTING -p tcp -j {INBOUND_CHAIN}");
    }
    if !jumps_present.1 {
        let _ = writeln!(r, "-A OUTPUT -p tcp -j {OUTBOUND_CHAIN}");
    }
    // Inbound: everything arriving for the pod, except the proxy's own ports and skipped
    // ports. The outbound port must never be reachable from outside the pod: redirected to the
    // inbound listener it would be refused there too (defence in depth), and left alone it
    // reaches nothing, since the outbound listener binds loopback.
    let mut inbound_skips = vec![args.admin_port, args.inbound_port, args.outbound_port];
    inbound_skips.extend(&args.skip_inbound_ports);
    for port in inbound_skips {
        let _ = writeln!(r, "-A {INBOUND_CHAIN} -p tcp --dport {port} -j RETURN");
    }
    let _ = writeln!(
        r,
        "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        args.inbound_port
    );
    // Outbound: the app's own connections leaving the pod.
    let _ = writeln!(
        r,
        "-A {OUTBOUND_CHAIN} -m owner --uid-owner {} -j RETURN",
        args.proxy_uid
    );
    let _ = writeln!(r, "-A {OUTBOUND_CHAIN} -o lo -j RETURN");
    for port in &args.skip_outbound_ports {
        let _ = writeln!(r, "-A {OUTBOUND_CHAIN} -p tcp --dport {port} -j RETURN");
    }
    for cidr in &args.skip_outbound_cidrs {
        let _ = writeln!(r, "-A {OUTBOUND_CHAIN} -d {cidr} -j RETURN");
    }
    let _ = writeln!(
        r,
        "-A {OUTBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        args.outbound_port
    );
    r.push_str("COMMIT\n");
    r
}

/// Installs the rules (idempotently) and returns what was applied.
///
/// # Errors
/// iptables is missing, refused (no `NET_ADMIN`), or rejected the rules.
pub fn run(args: &InitArgs) -> Result<String, InitError> {
    let restore = format!("{}-restore", args.iptables);
    let jumps = (
        jump_present(&args.iptables, "PREROUTING", INBOUND_CHAIN)?,
        jump_present(&args.iptables, "OUTPUT", OUTBOUND_CHAIN)?,
    );
    let rules = ruleset(args, jumps);
    let mut child = Command::new(&restore)
        .args(["--noflush", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(&restore, e))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(rules.as_bytes())
        .map_err(|e| InitError::Failed {
            binary: restore.clone(),
            detail: e.to_string(),
        })?;
    let out = child.wait_with_output().map_err(|e| InitError::Failed {
        binary: restore.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(classify(&restore, &String::from_utf8_lossy(&out.stderr)));
    }
    Ok(rules)
}

/// Whether `chain` already jumps to `target` (`iptables -C`).
fn jump_present(iptables: &str, chain: &str, target: &str) -> Result<bool, InitError> {
    let out = Command::new(iptables)
        .args(["-w", "-t", "nat", "-C", chain, "-p", "tcp", "-j", target])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(iptables, e))?;
    if out.status.success() {
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if is_permission_error(&stderr) {
        return Err(classify(iptables, &stderr));
    }
    // "Bad rule" / "No chain/target/match by that name": not there yet.
    Ok(false)
}

fn spawn_error(binary: &str, e: std::io::Error) -> InitError {
    if e.kind() == std::io::ErrorKind::NotFound {
        InitError::Missing {
            binary: binary.to_owned(),
        }
    } else {
        InitError::Failed {
            binary: binary.to_owned(),
            detail: e.to_string(),
        }
    }
}

fn is_permission_error(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("permission denied")
        || s.contains("operation not permitted")
        || s.contains("must be root")
}

fn classify(binary: &str, stderr: &str) -> InitError {
    let detail = stderr
        .trim()
        .lines()
        .next()
        .unwrap_or("no output")
        .to_owned();
    if is_permission_error(stderr) {
        InitError::NotPermitted {
            binary: binary.to_owned(),
            detail,
        }
    } else {
        InitError::Failed {
            binary: binary.to_owned(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn args(extra: &[&str]) -> InitArgs {
        let mut argv = vec!["init"];
        argv.extend(extra);
        Cli::try_parse_from(argv).unwrap().init
    }

    #[test]
    fn ruleset_skips_proxy_uid_loopback_admin_and_configured_ports_before_redirecting() {
        let a = args(&[
            "--proxy-uid",
            "1337",
            "--skip-inbound-ports",
            "22,9000",
            "--skip-outbound-ports",
            "5432",
            "--skip-outbound-cidrs",
            "169.254.169.254/32,10.96.0.0/12",
        ]);
        let r = ruleset(&a, (false, false));
        let expected = "\
*nat
:TRACEMESH_INBOUND - [0:0]
:TRACEMESH_OUTBOUND - [0:0]
-A PREROUTING -p tcp -j TRACEMESH_INBOUND
-A OUTPUT -p tcp -j TRACEMESH_OUTBOUND
-A TRACEMESH_INBOUND -p tcp --dport 4191 -j RETURN
-A TRACEMESH_INBOUND -p tcp --dport 4143 -j RETURN
-A TRACEMESH_INBOUND -p tcp --dport 4140 -j RETURN
-A TRACEMESH_INBOUND -p tcp --dport 22 -j RETURN
-A TRACEMESH_INBOUND -p tcp --dport 9000 -j RETURN
-A TRACEMESH_INBOUND -p tcp -j REDIRECT --to-ports 4143
-A TRACEMESH_OUTBOUND -m owner --uid-owner 1337 -j RETURN
-A TRACEMESH_OUTBOUND -o lo -j RETURN
-A TRACEMESH_OUTBOUND -p tcp --dport 5432 -j RETURN
-A TRACEMESH_OUTBOUND -d 169.254.169.254/32 -j RETURN
-A TRACEMESH_OUTBOUND -d 10.96.0.0/12 -j RETURN
-A TRACEMESH_OUTBOUND -p tcp -j REDIRECT --to-ports 4140
COMMIT
";
        assert_eq!(r, expected);
    }

    #[test]
    fn existing_jumps_are_not_added_again() {
        let r = ruleset(&args(&[]), (true, true));
        assert!(!r.contains("-A PREROUTING"), "{r}");
        assert!(!r.contains("-A OUTPUT"), "{r}");
        assert!(
            r.contains(":TRACEMESH_INBOUND - [0:0]"),
            "chains are still flushed: {r}"
        );
    }

    #[test]
    fn bad_cidrs_are_rejected() {
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope/8").is_err());
        assert!(parse_cidr("fd00::/8").is_ok());
        assert!(parse_cidr("10.1.2.3").is_ok());
    }

    #[test]
    fn missing_binary_and_permission_errors_say_what_to_do() {
        let e = run(&InitArgs {
            iptables: "/nonexistent/iptables".into(),
            ..args(&[])
        })
        .unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
        let e = classify("iptables", "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n");
        assert!(e.to_string().contains("NET_ADMIN"), "{e}");
    }
}
