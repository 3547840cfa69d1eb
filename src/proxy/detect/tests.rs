//! Tests for `detect`: each protocol's first bytes, the earliest decision point, what stays
//! undecided (and so is closed by the accept loop), monotonicity over prefixes and random
//! inputs, and the fuzz seed replay.

use std::path::Path;

use super::fuzzing::check_detect;
use super::Protocol::*;
use super::*;

/// The first bytes of a TLS 1.3 ClientHello as curl sends it (record header + handshake header).
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

#[test]
fn nothing_is_undecided() {
    assert_eq!(detect(b""), None);
}

#[test]
fn h2_preface_is_http2() {
    assert_eq!(detect(H2_PREFACE), Some(Http2));
    let with_settings = [&H2_PREFACE[..], &[0, 0, 0, 4, 0, 0, 0, 0, 0]].concat();
    assert_eq!(detect(&with_settings), Some(Http2));
}

#[test]
fn every_strict_prefix_of_the_h2_preface_waits() {
    for len in 1..H2_PREFACE.len() {
        assert_eq!(detect(&H2_PREFACE[..len]), None, "{len}");
    }
}

#[test]
fn a_preface_that_goes_wrong_is_an_http1_request_line_for_hyper_to_refuse() {
    assert_eq!(detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r"), Some(Http1));
    assert_eq!(detect(b"PRI * HTTP/1.1\r\n"), Some(Http1));
}

#[test]
fn tls_handshake_record_is_tls() {
    assert_eq!(detect(CLIENT_HELLO), Some(Tls));
    for minor in 0x00..=0x04 {
        assert_eq!(detect(&[0x16, 0x03, minor]), Some(Tls), "{minor}");
    }
}

#[test]
fn tls_decides_on_the_third_byte() {
    assert_eq!(detect(&[0x16]), None);
    assert_eq!(detect(&[0x16, 0x03]), None);
    assert_eq!(detect(&[0x16, 0x03, 0x05]), Some(Opaque));
    assert_eq!(detect(&[0x16, 0x02]), Some(Opaque));
    assert_eq!(
        detect(&[0x17, 0x03, 0x03]),
        Some(Opaque),
        "application data is no handshake"
    );
}

#[test]
fn a_method_token_and_space_is_http1_at_once() {
    for start in [
        &b"GET "[..],
        b"POST /api/v1/orders?id=7 HTTP/1.1\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\n",
        b"get /lowercase-is-a-token HTTP/1.1\r\n",
        b"M-SEARCH * HTTP/1.1\r\n",
        b"\r\nGET / HTTP/1.1\r\n",
        b"\n\r\n\nGET / HTTP/1.1\r\n",
        b"\rPOST / HTTP/1.1\r\n",
        b"\r\r\nGET / HTTP/1.1\r\n",
        b"GET\t/ HTTP/1.1\r\n",
        b"GET\x0b/ HTTP/1.1\r\n",
    ] {
        assert_eq!(
            detect(start),
            Some(Http1),
            "{:?}",
            String::from_utf8_lossy(start)
        );
    }
    assert_eq!(
        detect(b"GET"),
        None,
        "a method alone could still be anything"
    );
}

/// The request-line forms that hyper rejects are HTTP/1 here, so hyper answers them 400 instead
/// of the proxy relaying them unparsed to an app with a laxer parser.
#[test]
fn malformed_request_lines_are_http1_for_hyper_to_refuse() {
    for line in [
        &b"POST /a b HTTP/1.1\r\n"[..],
        b"GET /a HTTP/1.1 \r\n",
        b"GET /a\tb HTTP/1.1\r\n",
        b"GET /a\x00b HTTP/1.1\r\n",
        b"GET  /a HTTP/1.1\r\n",
        b"GET /a http/1.1\r\n",
        b"GET / HTTP/2.0\r\n",
        b"GET /\x7f HTTP/1.1\r\n",
        b"get key\r\n",
        b"SET key value\r\n",
    ] {
        assert_eq!(
            detect(line),
            Some(Http1),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn bytes_no_request_can_start_with_are_opaque() {
    for bytes in [
        &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
        b"*1\r\n$4\r\nPING\r\n",
        b"PING\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        b" GET / HTTP/1.1\r\n",
        b"G(T / HTTP/1.1\r\n",
        b"\x00",
    ] {
        assert_eq!(
            detect(bytes),
            Some(Opaque),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn empty_lines_and_a_lone_cr_wait() {
    assert_eq!(detect(b"\r\n\r\n"), None);
    assert_eq!(detect(b"\r"), None);
    assert_eq!(detect(b"\r\r\n"), None);
    assert_eq!(detect(b"HELLO"), None);
}

#[test]
fn a_full_buffer_of_a_method_token_is_http1_so_hyper_refuses_it() {
    let token = vec![b'A'; MAX_DETECT_BYTES];
    assert_eq!(detect(&token[..MAX_DETECT_BYTES - 1]), None);
    assert_eq!(detect(&token), Some(Http1));
    let mut lines = b"\r\n".repeat(MAX_DETECT_BYTES / 2);
    assert_eq!(detect(&lines), Some(Http1));
    lines.push(0x01);
    assert_eq!(
        detect(&lines),
        Some(Http1),
        "bytes past the limit are not looked at"
    );
}

/// Monotone and total over every prefix of each case above and of the seeds.
#[test]
fn decisions_never_change_as_bytes_arrive() {
    let mut long_line = b"GET /".to_vec();
    long_line.resize(MAX_DETECT_BYTES + 10, b'a');
    let long_token = vec![b'X'; MAX_DETECT_BYTES + 10];
    let with_settings = [&H2_PREFACE[..], b"\x00\x00\x12\x04"].concat();
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
        b"\r\nPRI * HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nX",
        b"PRI * HTTP/2.0\r\n\r\nSX",
        &with_settings,
        CLIENT_HELLO,
        b"SSH-2.0-OpenSSH_9.6\r\n",
        &long_line,
        &long_token,
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
