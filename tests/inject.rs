//! `tracemesh inject`, the real binary: `tests/golden/<name>.in.yaml` in, compared byte for byte
//! with `tests/golden/<name>.out.yaml`; injecting the output again gives the same bytes; bad
//! input exits non-zero and writes nothing to stdout.
//!
//! To regenerate the goldens after an intended change, run
//! `TRACEMESH_BLESS=1 cargo test --test inject` and review the diff of `tests/golden/`.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

/// Pinned so that the goldens do not change with the crate version.
const IMAGE: &str = "tracemesh:test";

const GOLDENS: &[&str] = &[
    "pod",
    "deployment",
    "statefulset",
    "daemonset",
    "replicaset",
    "job",
    "cronjob",
    "list",
    "multi",
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn inject(stdin: &[u8], extra: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracemesh"))
        .args(["inject", "--image", IMAGE])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning tracemesh inject");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .expect("writing stdin");
    child
        .wait_with_output()
        .expect("waiting for tracemesh inject")
}

fn inject_ok(stdin: &[u8]) -> Vec<u8> {
    let out = inject(stdin, &[]);
    assert!(
        out.status.success(),
        "tracemesh inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn golden_outputs_match() {
    let bless = std::env::var_os("TRACEMESH_BLESS").is_some();
    for name in GOLDENS {
        let input = golden_dir().join(format!("{name}.in.yaml"));
        let expected_path = golden_dir().join(format!("{name}.out.yaml"));
        // The file path form (not stdin) is what users type.
        let out = Command::new(env!("CARGO_BIN_EXE_tracemesh"))
            .args(["inject", "--image", IMAGE])
            .arg(&input)
            .output()
            .expect("running tracemesh inject");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if bless {
            std::fs::write(&expected_path, &out.stdout).expect("writing golden");
            continue;
        }
        let expected = std::fs::read(&expected_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with TRACEMESH_BLESS=1 to create it)",
                expected_path.display()
            )
        });
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&expected),
            "{name}: output differs from {} (TRACEMESH_BLESS=1 regenerates)",
            expected_path.display()
        );
    }
}

#[test]
fn injecting_output_again_gives_the_same_bytes() {
    for name in GOLDENS {
        let input = std::fs::read(golden_dir().join(format!("{name}.in.yaml"))).expect("golden");
        let once = inject_ok(&input);
        let twice = inject_ok(&once);
        assert_eq!(
            String::from_utf8_lossy(&twice),
            String::from_utf8_lossy(&once),
            "{name}"
        );
    }
}

#[test]
fn config_map_passes_through_unchanged() {
    let input = std::fs::read_to_string(golden_dir().join("multi.in.yaml")).expect("golden");
    let out = String::from_utf8(inject_ok(input.as_bytes())).expect("utf-8");
    let first = |s: &str| -> serde_json::Value {
        let doc = s.split("\n---\n").next().expect("a document").to_owned();
        serde_yaml_ng::from_str(&doc).expect("YAML")
    };
    assert_eq!(first(&out), first(&input));
    assert!(!out
        .split("\n---\n")
        .next()
        .unwrap()
        .contains("tracemesh-proxy"));
}

#[test]
fn skipped_workloads_record_their_reason() {
    let input = std::fs::read(golden_dir().join("multi.in.yaml")).expect("golden");
    let out = inject(&input, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Deployment \"backend\" injected"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Deployment \"legacy\" skipped: disabled"),
        "{stderr}"
    );
    assert!(
        stderr.contains("DaemonSet \"cni-helper\" skipped: host-network"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("tracemesh.io/inject-skipped: disabled"));
    assert!(stdout.contains("tracemesh.io/inject-skipped: host-network"));
}

#[test]
fn unparsable_input_names_the_document_and_writes_nothing() {
    let out = inject(b"kind: ConfigMap\n---\nkind: Pod\nspec: [unclosed\n", &[]);
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "wrote {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("document 2"), "{stderr}");
}

#[test]
fn invalid_annotation_fails_the_whole_input() {
    let input = b"kind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: app}]}\n---\n\
kind: Pod\nmetadata:\n  name: b\n  annotations: {tracemesh.io/propagators: jaeger}\nspec: {containers: [{name: app}]}\n";
    let out = inject(input, &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("document 2") && stderr.contains("tracemesh.io/propagators"),
        "{stderr}"
    );
}

#[test]
fn stdin_dash_is_accepted() {
    let input = std::fs::read(golden_dir().join("pod.in.yaml")).expect("golden");
    let out = inject(&input, &["-"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, inject_ok(&input));
}
