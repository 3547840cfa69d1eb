//! Tests for `detect`: each protocol's first bytes, the earliest decision point, the
//! complete-buffer rules, monotonicity over prefixes and random inputs, and the fuzz seed replay.

use std::path::Path;

use super::fuzzing::check_detect;
use super::Protocol::*;
use super::*;

/// The first bytes of a TLS 1.3 ClientHello as curl sends it (record header + handshake header).
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

fn open(buf: &[u8]) -> Option<Protocol> {
    detect(buf, false)
}

fn done(buf: &[u8]) -> Option<Protocol> {
    detect(buf, true)
}

#[test]
fn empty_needs_more_bytes_unless_complete() {
    assert_eq!(open(b""), None);
    assert_eq!(done(b""), Some(Opaque));
}

#[test]
fn h2_preface_is_http2() {
    assert_eq!(open(H2_PREFACE), Some(Http2));
    let with_settings = [&H2_PREFACE[..], &[0, 0, 0, 4, 0, 0, 0, 0, 0]].concat();
    assert_eq!(open(&with_settings), Some(Http2));
}

#[test]
fn every_strict_prefix_of_the_h2_preface_waits() {
    for len in 1..H2_PREFACE.len() {
        assert_eq!(open(&H2_PREFACE[..len]), None, "{len}");
        assert!(done(&H2_PREFACE[..len]).is_some(), "{len}");
    }
}

#[test]
fn cut_short_h2_preface_is_not_http2() {
    assert_eq!(
        done(&H2_PREFACE[..16]),
        Some(Opaque),
        "PRI * HTTP/2.0 is no HTTP/1 line"
    );
    assert_eq!(
        done(b"PRI * HTTP/"),
        Some(Http1),
        "still a plausible HTTP/1 line"
    );
    assert_eq!(open(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r"), Some(Opaque));
}

#[test]
fn tls_handshake_record_is_tls() {
    assert_eq!(open(CLIENT_HELLO), Some(Tls));
    for minor in 0x00..=0x04 {
        assert_eq!(open(&[0x16, 0x03, minor]), Some(Tls), "{minor}");
    }
}

#[test]
fn tls_decides_on_the_third_byte() {
    assert_eq!(open(&[0x16]), None);
    assert_eq!(open(&[0x16, 0x03]), None);
    assert_eq!(done(&[0x16, 0x03]), Some(Opaque));
    assert_eq!(open(&[0x16, 0x03, 0x05]), Some(Opaque));
    assert_eq!(open(&[0x16, 0x02]), Some(Opaque));
    assert_eq!(
        open(&[0x17, 0x03, 0x03]),
        Some(Opaque),
        "application data is no handshake"
    );
}

#[test]
fn request_lines_are_http1_as_soon_as_complete() {
    for line in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"GET / HTTP/1.0\r\n",
        b"POST /api/v1/orders?id=7 HTTP/1.1\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\n",
        b"GET http://example.com:8080/x HTTP/1.1\r\n",
        b"PRI * HTTP/1.1\r\n",
        b"get /lowercase-is-a-token HTTP/1.1\r\n",
        b"M-SEARCH * HTTP/1.1\r\n",
        b"GET / HTTP/1.1\n",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\n",
        b"\r\nGET / HTTP/1.1\r\n",
        b"\n\r\n\nGET / HTTP/1.1\r\n",
    ] {
        assert_eq!(
            open(line),
            Some(Http1),
            "{:?}",
            String::from_utf8_lossy(line)
        );
        let (body, end) = line.split_at(line.len() - 1);
        assert_ne!(open(body), Some(Http1), "decided before the line ended");
        assert_eq!(end, b"\n");
    }
}

#[test]
fn future_http1_minor_versions_go_to_hyper() {
    assert_eq!(open(b"GET / HTTP/1.2\r\n"), Some(Http1));
}

#[test]
fn other_protocols_are_opaque() {
    for bytes in [
        &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
        b"*1\r\n$4\r\nPING\r\n",
        b"PING\r\n",
        b"SET key value\r\n",
        b"get key\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b"GET / HTTP/2.0\r\n",
        b"GET / HTTP/1.1 \r\n",
        b"GET / http/1.1\r\n",
        b"GET  / HTTP/1.1\r\n",
        b" GET / HTTP/1.1\r\n",
        b"GET /\x01 HTTP/1.1\r\n",
        b"GET /\x7f HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\r\n",
        b"G(T / HTTP/1.1\r\n",
        b"\r\r\n",
    ] {
        assert_eq!(
            open(bytes),
            Some(Opaque),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn opaque_is_decided_on_the_first_impossible_byte() {
    assert_eq!(open(b"\x00"), Some(Opaque));
    assert_eq!(open(b"GET\t"), Some(Opaque));
    assert_eq!(open(b"GET /\t"), Some(Opaque));
    assert_eq!(open(b"GET / X"), Some(Opaque));
    assert_eq!(open(b"GET / HTTP/1.1x"), Some(Opaque));
}

#[test]
fn plausible_partial_line_waits_then_is_http1_when_bytes_stop() {
    for partial in [
        &b"GET "[..],
        b"GET /index",
        b"GET /index ",
        b"GET /index HTTP/",
        b"GET /index HTTP/1.1",
        b"GET /index HTTP/1.1\r",
    ] {
        assert_eq!(
            open(partial),
            None,
            "{:?}",
            String::from_utf8_lossy(partial)
        );
        assert_eq!(
            done(partial),
            Some(Http1),
            "{:?}",
            String::from_utf8_lossy(partial)
        );
    }
}

#[test]
fn a_method_alone_is_opaque_when_bytes_stop() {
    assert_eq!(open(b"HELLO"), None);
    assert_eq!(done(b"HELLO"), Some(Opaque));
    assert_eq!(done(b"\r\n\r\n"), Some(Opaque));
    assert_eq!(done(b"\r"), Some(Opaque));
}

#[test]
fn full_buffer_inside_a_request_target_is_http1_so_hyper_answers_414() {
    let mut line = b"GET /".to_vec();
    line.resize(MAX_DETECT_BYTES, b'a');
    assert_eq!(open(&line[..MAX_DETECT_BYTES - 1]), None);
    assert_eq!(open(&line), Some(Http1), "a full buffer counts as complete");
    assert_eq!(done(&line), Some(Http1));
    line.push(0x01);
    assert_eq!(
        open(&line),
        Some(Http1),
        "bytes past the limit are not looked at"
    );
}

#[test]
fn full_buffer_of_a_method_token_is_opaque() {
    let token = vec![b'A'; MAX_DETECT_BYTES];
    assert_eq!(open(&token), Some(Opaque));
}

#[test]
fn full_buffer_with_a_control_byte_in_the_target_is_opaque() {
    let mut line = b"GET /\x01".to_vec();
    line.resize(MAX_DETECT_BYTES, b'a');
    assert_eq!(done(&line), Some(Opaque));
}

/// Monotone and total over every prefix of each case above and of the seeds.
#[test]
fn decisions_never_change_as_bytes_arrive() {
    let mut long_line = b"GET /".to_vec();
    long_line.resize(MAX_DETECT_BYTES + 10, b'a');
    let with_settings = [&H2_PREFACE[..], b"\x00\x00\x12\x04"].concat();
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
        b"\r\nPRI * HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nX",
        &with_settings,
        CLIENT_HELLO,
        b"SSH-2.0-OpenSSH_9.6\r\n",
        &long_line,
    ] {
        check_detect(bytes);
    }
}

#[test]
fn random_inputs_are_monotone() {
    const PIECES: &[&[u8]] = &[
        b"GET",
        b"PRI",
        b" ",
        b"/",
        b"*",
        b"HTTP/1.",
        b"HTTP/2.0",
        b"1",
        b"\r",
        b"\n",
        b"\r\n",
        b"SM",
        b"\x16",
        b"\x03",
        b"\x01",
        b"\x00",
        b"\t",
        b"x",
        b"\x7f",
        b"\xff",
        b"-",
    ];
    let mut rng = fastrand::Rng::with_seed(0xde7ec7);
    for _ in 0..3_000 {
        let mut input = Vec::new();
        if rng.u8(..4) == 0 {
            input.extend_from_slice(&H2_PREFACE[..rng.usize(..=H2_PREFACE.len())]);
        }
        for _ in 0..rng.usize(..12) {
            input.extend_from_slice(PIECES[rng.usize(..PIECES.len())]);
        }
        check_detect(&input);
    }
}

#[test]
fn fuzz_seeds_pass_their_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/detect");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check_detect(&data));
        assert!(outcome.is_ok(), "seed {} failed", path.display());
        n += 1;
    }
    assert!(n >= 5, "only {n} seeds");
}
