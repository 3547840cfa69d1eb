#!/usr/bin/env python3
"""A plain HTTP app with no tracing code, for tests/mesh.rs: it never reads, writes or forwards
a trace context header, so whatever spans exist are the sidecar's doing.

Usage: plain_app.py PORT --body-bytes N
       plain_app.py PORT --next http://HOST:PORT/PATH

- `--body-bytes N`: any GET answers N bytes of the harness's pattern (byte i is
  (i * 31 + 7) % 256, as in tests/support/body.rs).
- `--next URL`: any GET calls URL by address (plain HTTP/1.1 with http.client, which reads no
  proxy settings, sending none of the incoming headers) and answers `upstream <status>\\n`
  followed by the upstream's body, byte for byte.

Binds 0.0.0.0:PORT, prints `listening PORT` once bound, and serves HTTP/1.1 with
Content-Length, one thread per connection. Stdlib only.
"""

import argparse
import http.client
import http.server
import sys
import urllib.parse


def pattern(n):
    table = bytes((i * 31 + 7) % 256 for i in range(256))
    return (table * (n // 256 + 1))[:n]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--body-bytes", type=int)
    what.add_argument("--next")
    args = parser.parse_args()
    body = pattern(args.body_bytes) if args.body_bytes is not None else None
    upstream = urllib.parse.urlsplit(args.next) if args.next else None

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if body is not None:
                self.answer(200, body)
                return
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=10)
            try:
                conn.request("GET", upstream.path or "/")
                rsp = conn.getresponse()
                self.answer(200, b"upstream %d\n" % rsp.status + rsp.read())
            except OSError as e:
                self.answer(502, ("upstream failed: %s\n" % e).encode())
            finally:
                conn.close()

        def answer(self, status, payload):
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = http.server.ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    server.daemon_threads = True
    print("listening %d" % args.port, flush=True)
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
