//! Commands run to completion for the namespace harness: bounded by [`COMMAND_TIMEOUT`], killed
//! when dropped, and failing with their output. Long-running processes are [`super::Net::spawn`]'s.

use std::{
    process::{Output, Stdio},
    time::Duration,
};

/// Bounds every command run to completion (an `ip` call, a `curl`, `tracemesh init`).
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `cmd` to completion within [`COMMAND_TIMEOUT`]; returns its stdout.
///
/// # Panics
/// If it cannot start, outlives the timeout (it is killed), or fails; with its stderr.
pub async fn run(cmd: tokio::process::Command) -> String {
    let shown = format!("{:?}", cmd.as_std());
    let out = output(cmd).await;
    assert!(
        out.status.success(),
        "{shown}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` to completion within [`COMMAND_TIMEOUT`], whatever its exit status.
///
/// # Panics
/// If it cannot start or outlives the timeout (it is killed).
pub async fn output(mut cmd: tokio::process::Command) -> Output {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let shown = format!("{:?}", cmd.as_std());
    tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{shown}: still running after {COMMAND_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{shown}: {e}"))
}

/// `ip args..` in the root namespace.
///
/// # Panics
/// See [`run`].
pub async fn ip(args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(args);
    run(cmd).await
}

/// A fresh tokio command with `cmd`'s program, arguments and environment changes.
pub(super) fn clone_command(cmd: &std::process::Command) -> tokio::process::Command {
    let mut copy = tokio::process::Command::new(cmd.get_program());
    copy.args(cmd.get_args())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => copy.env(key, v),
            None => copy.env_remove(key),
        };
    }
    copy
}
