#!/usr/bin/env python3
"""A legacy application for the browser test (tests/browser.rs).

It knows nothing of cookies: it reads the session from the headers sessiongate
adds (X-Session-Id, X-Session-Data) and changes it with response headers
(X-Session-Set, X-Session-Regenerate, X-Session-Destroy). Each page also shows
the session id and the Cookie header it received, so the test can check what
the application saw against what the browser holds.

    python3 tests/browser/legacy_app.py --port 0

prints "legacy app listening on http://127.0.0.1:PORT" once it accepts.
Python 3 standard library only.
"""

import argparse
import html
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode

MAX_FORM_BYTES = 4096


class LegacyApp(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/":
            self.home()
        elif path == "/account":
            self.account()
        elif path == "/logout":
            self.page("Signed out", '<p id="signed-out">You are signed out.</p>',
                      [("X-Session-Destroy", "true")])
        else:
            self.page("Not found", "<p>not found</p>", status=HTTPStatus.NOT_FOUND)

    def do_POST(self):
        if self.path.split("?", 1)[0] != "/login":
            self.page("Not found", "<p>not found</p>", status=HTTPStatus.NOT_FOUND)
            return
        length = int(self.headers.get("Content-Length") or "0")
        if not 0 <= length <= MAX_FORM_BYTES:
            self.page("Bad form", "<p>bad form</p>", status=HTTPStatus.BAD_REQUEST)
            return
        form = dict(parse_qsl(self.rfile.read(length).decode("utf-8", "replace")))
        username = form.get("username", "").strip()[:40]
        if not username or not username.isprintable():
            self.page("Bad name", "<p>choose a name</p>", status=HTTPStatus.BAD_REQUEST)
            return
        # A new session id at login: the session fixation defence.
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", "/")
        self.send_header("Content-Length", "0")
        self.send_header("X-Session-Set", urlencode({"user": username}))
        self.send_header("X-Session-Regenerate", "true")
        self.end_headers()

    def user(self):
        return dict(parse_qsl(self.headers.get("X-Session-Data", ""))).get("user")

    def home(self):
        user = self.user()
        if user:
            body = (f'<p>Signed in as <span id="user">{html.escape(user)}</span>.</p>'
                    '<p><a id="account" href="/account">Your account</a> '
                    '<a id="logout" href="/logout">Log out</a></p>')
        else:
            body = ('<form id="login" method="post" action="/login">'
                    '<input id="username" name="username"> '
                    '<button id="submit" type="submit">Log in</button></form>')
        self.page("Home", body)

    def account(self):
        user = self.user()
        if user:
            body = (f'<p>Account of <span id="user">{html.escape(user)}</span>.</p>'
                    '<p><a id="logout" href="/logout">Log out</a></p>')
        else:
            body = '<p id="anonymous">Nobody is signed in.</p>'
        self.page("Account", body)

    def page(self, title, body, extra=(), status=HTTPStatus.OK):
        e = html.escape
        text = (
            f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"</head><body><h1>{e(title)}</h1>{body}"
            f'<p>Session: <code id="session">{e(self.headers.get("X-Session-Id", ""))}</code></p>'
            f'<p>Cookie header: <code id="cookies">{e(self.headers.get("Cookie", ""))}</code></p>'
            "</body></html>\n"
        ).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(text)))
        self.send_header("Cache-Control", "no-store")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, format, *args):
        sys.stderr.write("legacy app: %s\n" % (format % args))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), LegacyApp)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"legacy app listening on http://{host}:{port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
