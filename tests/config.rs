//! A bad configuration stops the proxy before it listens: one line naming the value and its
//! origin, exit code 64.

mod support;

use std::time::Duration;

use support::process::{Exited, Proxy};

async fn exits(args: &[&str], env: &[(&str, &str)]) -> Exited {
    let mut b = Proxy::builder().name("bad-config").args(args);
    for (k, v) in env {
        b = b.env(k, v);
    }
    // A config that is wrongly accepted keeps running: run_to_exit kills it and panics.
    b.run_to_exit(Duration::from_secs(10)).await
}

fn stderr(e: &Exited) -> String {
    e.stderr.join("\n")
}

#[tokio::test]
async fn sampler_arg_out_of_range_exits_64_naming_the_variable() {
    let e = exits(
        &[],
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ],
    )
    .await;
    assert_eq!(e.status.code(), Some(64), "{}", stderr(&e));
    assert_eq!(
        stderr(&e).trim(),
        r#"tracemesh: OTEL_TRACES_SAMPLER_ARG "1.5": not in [0, 1]"#
    );
}

#[tokio::test]
async fn unknown_propagator_exits_64() {
    let e = exits(&["--propagators", "tracecontext,jaeger"], &[]).await;
    assert_eq!(e.status.code(), Some(64), "{}", stderr(&e));
    assert!(stderr(&e).contains("jaeger"), "{}", stderr(&e));
}

#[tokio::test]
async fn bad_address_from_environment_exits_64() {
    let e = exits(&[], &[("TRACEMESH_APP_ADDR", "not-an-address")]).await;
    assert_eq!(e.status.code(), Some(64), "{}", stderr(&e));
    assert!(stderr(&e).contains("not-an-address"), "{}", stderr(&e));
}

#[tokio::test]
async fn unknown_exporter_exits_64() {
    let e = exits(&[], &[("OTEL_TRACES_EXPORTER", "zipkin")]).await;
    assert_eq!(e.status.code(), Some(64), "{}", stderr(&e));
    assert!(
        stderr(&e).contains("OTEL_TRACES_EXPORTER \"zipkin\""),
        "{}",
        stderr(&e)
    );
}

#[tokio::test]
async fn durations_need_units() {
    let e = exits(&["--shutdown-grace", "30"], &[]).await;
    assert_eq!(e.status.code(), Some(64), "{}", stderr(&e));
}

#[tokio::test]
async fn port_in_use_fails_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let e = exits(&["--admin-listen", &addr], &[]).await;
    assert_ne!(e.status.code(), Some(0));
    assert!(
        stderr(&e).contains(&format!("binding the admin listener on {addr}")),
        "{}",
        stderr(&e)
    );
}

/// The allocator's built-in configuration (`malloc_conf` in `src/main.rs`) is one jemalloc
/// accepts: it names an unknown or malformed option on stderr, and otherwise says nothing.
#[test]
fn the_allocator_accepts_its_built_in_configuration() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tracemesh"))
        .arg("--version")
        .env_remove("_RJEM_MALLOC_CONF")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("<jemalloc>"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tracemesh "));
}
