#!/usr/bin/env python3
"""A third-party service for tests/security.rs: it records every TCP connection it accepts and
every HTTP request it parses, so the test can assert that nothing reached it through a pod.

Usage: recorder.py PORT

Binds 0.0.0.0:PORT and prints `listening PORT` once bound. Then, flushed as they happen:
- `connection IP:PORT` for each accepted connection, at accept and before any byte is read, so a
  connection that sends nothing, or a CONNECT tunnel's first byte, still counts;
- `request METHOD TARGET host=HOST` for each request line and headers it parses.

`GET /s.txt` answers `third-party secret\\n` (so a test can tell the third service's answer from
any other); anything else is 404, and methods other than GET get 501. HTTP/1.1 with
Content-Length, one thread per connection. Stdlib only.
"""

import http.server
import sys
import threading

SECRET = b"third-party secret\n"
_lock = threading.Lock()


def record(line):
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def parse_request(self):
        ok = super().parse_request()
        if ok:
            record("request %s %s host=%s" % (self.command, self.path, self.headers.get("Host")))
        return ok

    def do_GET(self):
        if self.path == "/s.txt":
            self.answer(200, SECRET)
        else:
            self.answer(404, b"not found\n")

    def answer(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):
        sys.stderr.write("%s %s\n" % (self.client_address[0], format % args))


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def process_request(self, request, client_address):
        # On the accepting thread, so lines come in accept order.
        record("connection %s:%d" % client_address[:2])
        super().process_request(request, client_address)


def main():
    port = int(sys.argv[1])
    server = Server(("0.0.0.0", port), Handler)
    record("listening %d" % port)
    server.serve_forever()


if __name__ == "__main__":
    main()
