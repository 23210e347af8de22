#!/usr/bin/env python3
"""A tiny "legacy" web application for the sessiongate demo.

It has no session machinery of its own. It learns the visitor's session from
the request headers that sessiongate adds (X-Session-Id, X-Session-New,
X-Session-Data) and writes to the session with response headers
(X-Session-Set, X-Session-Regenerate, X-Session-Destroy) that sessiongate
consumes and never lets reach the browser.

Python 3 standard library only. Run it behind the proxy:

    python3 examples/demo/app.py --port 3000

Because it trusts the X-Session-* headers, it must only be reachable through
sessiongate: it listens on 127.0.0.1 by default.
"""

import argparse
import html
import re
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode

# A username is short printable text; sessiongate refuses control characters
# anyway, but a friendly form says so before the proxy has to.
USERNAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,40}$")
MAX_FORM_BYTES = 4096

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.5; }
h1 { font-size: 1.5rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { text-align: left; padding: .25rem .75rem; border-bottom: 1px solid #ddd; }
code { background: #f3f3f3; padding: 0 .25rem; border-radius: 3px; }
.visits { font-size: 2rem; font-weight: bold; }
.note { background: #f6f8fa; border-left: 4px solid #4a7; padding: .5rem 1rem; }
.warn { background: #fff4e5; border-left: 4px solid #e90; padding: .5rem 1rem; }
.error { color: #b00; }
"""


def session_data(headers):
    """The session's data as the proxy sent it: a dict (the header is
    application/x-www-form-urlencoded, keys sorted, absent when empty)."""
    raw = headers.get("X-Session-Data", "")
    return dict(parse_qsl(raw, keep_blank_values=True))


def short_id(session_id):
    """Enough of the id to tell two sessions apart on screen, not the whole
    secret-bearing value."""
    if not session_id:
        return None
    return session_id[:8] + "\u2026"


def e(text):
    return html.escape(text)


def page(title, body):
    """A small page with the demo's style."""
    return "\n".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        '<link rel="stylesheet" href="/static/style.css">',
        f"</head><body><h1>{e(title)}</h1>",
        *body,
        "</body></html>\n",
    ])


def safe_next(target):
    """Where to go after logging in: a path on this site, never another site
    (one leading slash, no backslash), else the home page."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


class DemoApp(BaseHTTPRequestHandler):
    server_version = "legacy-demo/1.0"
    protocol_version = "HTTP/1.1"
    # Which instance answered, shown on every page (--name).
    name = "app"

    # --- routes -----------------------------------------------------------

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/":
            self.index()
        elif path == "/logout":
            self.logout()
        elif path == "/login":
            self.login_page()
        elif path == "/admin/" or path.startswith("/admin/"):
            self.admin()
        elif path == "/static/style.css":
            self.send_body(HTTPStatus.OK, STYLE, "text/css; charset=utf-8",
                           extra=[("Cache-Control", "public, max-age=300")])
        elif path == "/healthz":
            self.send_body(HTTPStatus.OK, "ok\n", "text/plain; charset=utf-8")
        else:
            self.send_body(HTTPStatus.NOT_FOUND, "not found\n",
                           "text/plain; charset=utf-8")

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path == "/login":
            self.login()
        elif path == "/note":
            self.note()
        else:
            self.send_body(HTTPStatus.NOT_FOUND, "not found\n",
                           "text/plain; charset=utf-8")

    # --- pages ------------------------------------------------------------

    def index(self, error=None):
        data = session_data(self.headers)
        try:
            visits = int(data.get("count", "0")) + 1
        except ValueError:
            visits = 1
        session_id = self.headers.get("X-Session-Id")
        is_new = self.headers.get("X-Session-New") == "true"
        user = data.get("user")

        body = render_index(
            session_id=session_id,
            is_new=is_new,
            user=user,
            visits=visits,
            data=data,
            other_cookies=self.headers.get("Cookie"),
            error=error,
            server=self.name,
        )
        extra = [("Cache-Control", "no-store")]
        if session_id and self.command == "GET":
            # Written back through the proxy: the browser never sees this header.
            # (Only on GET: a HEAD or a failed login form does not count as a visit.)
            extra.append(("X-Session-Set", urlencode({"count": visits})))
        status = HTTPStatus.BAD_REQUEST if error else HTTPStatus.OK
        self.send_body(status, body, "text/html; charset=utf-8", extra=extra)

    def login(self):
        form = self.read_form()
        if form is None:
            return
        username = form.get("username", "").strip()
        if not USERNAME_RE.match(username):
            self.index(error="Choose a name of 1 to 40 printable characters.")
            return
        role = "admin" if form.get("role") == "admin" else "user"
        self.redirect_home([
            ("X-Session-Set", urlencode({"user": username, "role": role})),
            # A new session id at login: an id planted before login
            # (session fixation) is worth nothing afterwards.
            ("X-Session-Regenerate", "true"),
        ], location=safe_next(form.get("next", "/")))

    def logout(self):
        self.redirect_home([("X-Session-Destroy", "true")])

    def login_page(self):
        query = dict(parse_qsl(self.path.partition("?")[2]))
        target = e(safe_next(query.get("next", "/")))
        body = page("Log in", [
            f'<p>Served by <code id="server">{e(self.name)}</code>.</p>',
            '<form method="post" action="/login" id="login">',
            f'<input type="hidden" name="next" value="{target}">',
            '<label>Name <input name="username" maxlength="40" required autofocus></label> ',
            '<label><input type="checkbox" name="role" value="admin"> administrator</label> ',
            '<button type="submit">Log in</button></form>',
        ])
        self.send_body(HTTPStatus.OK, body, "text/html; charset=utf-8",
                       extra=[("Cache-Control", "no-store")])

    def admin(self):
        # Reached only through sessiongate's gate (routes: require role=admin):
        # the application itself checks nothing here.
        data = session_data(self.headers)
        body = page("Admin area", [
            f'<p id="admin">Administrators only: <strong id="user">{e(data.get("user", ""))}</strong> '
            f'({e(data.get("role", ""))}).</p>',
            f'<p>Served by <code id="server">{e(self.name)}</code>.</p>',
            '<p><a href="/">Home</a></p>',
        ])
        self.send_body(HTTPStatus.OK, body, "text/html; charset=utf-8",
                       extra=[("Cache-Control", "no-store")])

    def note(self):
        form = self.read_form()
        if form is None:
            return
        note = form.get("note", "")[:200]
        self.redirect_home([("X-Session-Set", urlencode({"note": note}))])

    def read_form(self):
        length = self.headers.get("Content-Length")
        try:
            length = int(length or "0")
        except ValueError:
            length = -1
        if length < 0 or length > MAX_FORM_BYTES:
            self.send_body(HTTPStatus.BAD_REQUEST, "bad form\n",
                           "text/plain; charset=utf-8")
            return None
        return dict(parse_qsl(self.rfile.read(length).decode("utf-8", "replace"),
                              keep_blank_values=True))

    # --- plumbing ---------------------------------------------------------

    def redirect_home(self, extra, location="/"):
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.send_header("Cache-Control", "no-store")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()

    def send_body(self, status, text, content_type, extra=()):
        payload = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def log_message(self, format, *args):
        # Request lines only (method, path, status): no headers, so no
        # session id ends up in this log either.
        sys.stderr.write("demo-app: %s\n" % (format % args))


NOTE = (
    '<div class="note"><h2>What the proxy did</h2><ul>'
    "<li>It gave your browser a cookie holding a random session id and an "
    "HMAC-SHA256 signature. The data itself stays on the server.</li>"
    "<li>On each request it checked the signature, looked the session up, removed "
    "its own cookie and any <code>X-Session-*</code> header your browser might have "
    "sent, and told this application about the session in "
    "<code>X-Session-Id</code>, <code>X-Session-New</code> and "
    "<code>X-Session-Data</code>.</li>"
    "<li>This page answered with <code>X-Session-Set: count=N</code>; the proxy "
    "stored the new count and removed the header, so your browser never saw it.</li>"
    "<li>Logging in answers with <code>X-Session-Set: user=&hellip;</code> and "
    "<code>X-Session-Regenerate: true</code>: the data moves to a new id and the "
    "old cookie stops working. Logging out answers with "
    "<code>X-Session-Destroy: true</code>.</li>"
    "</ul>"
    "<p>This application has no session code at all: it only reads and writes "
    "headers.</p></div>"
)


def render_index(*, session_id, is_new, user, visits, data, other_cookies, error,
                 server="app"):
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>sessiongate demo</title>",
        '<link rel="stylesheet" href="/static/style.css">',
        "</head><body>",
        "<h1>A legacy app with server-side sessions</h1>",
        f'<p>Served by <code id="server">{e(server)}</code>.</p>',
    ]

    if not session_id:
        parts.append(
            '<p class="warn">This request carried no <code>X-Session-Id</code>: '
            "you are talking to the application directly, so it has no session. "
            'Open it through sessiongate instead, at '
            '<a href="http://127.0.0.1:8080/">http://127.0.0.1:8080/</a>.</p>'
        )
    else:
        parts.append(
            f'<p>Visits in this session: <span class="visits" id="visits">{visits}</span></p>'
        )
        parts.append("<table>")
        parts.append(f"<tr><th>Session id</th><td><code>{e(short_id(session_id))}</code> "
                     "(shortened)</td></tr>")
        parts.append("<tr><th>New session?</th><td>"
                     + ("yes, created by this request" if is_new else "no, you came back")
                     + "</td></tr>")
        parts.append("<tr><th>Signed in as</th><td>"
                     + (f'<strong id="user">{e(user)}</strong>' if user else "nobody")
                     + "</td></tr>")
        parts.append("</table>")

    if error:
        parts.append(f'<p class="error">{e(error)}</p>')

    if session_id and user:
        parts.append('<p><a href="/logout">Log out</a> (the proxy destroys the session '
                     "and expires the cookie)</p>")
        parts.append('<form method="post" action="/note" id="note-form">'
                     '<label>Note <input name="note" maxlength="200"></label> '
                     '<button type="submit">Save in the session</button></form>')
    elif session_id:
        parts.append(
            '<form method="post" action="/login">'
            '<label>Name <input name="username" maxlength="40" required autofocus></label> '
            '<button type="submit">Log in</button></form>'
            "<p>No password: any name will do. Logging in gives you a new session id "
            "and keeps your visit count.</p>"
        )

    parts.append("<h2>Session data the application received</h2>")
    if data:
        parts.append("<table><tr><th>key</th><th>value</th></tr>")
        for key in sorted(data):
            parts.append(f"<tr><td><code>{e(key)}</code></td><td><code>{e(data[key])}</code></td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>None yet (no <code>X-Session-Data</code> header).</p>")

    if session_id:
        parts.append(NOTE)

    if session_id and other_cookies:
        # Behind the proxy this never holds the session cookie: the proxy strips it.
        parts.append(f"<p>Other cookies passed through untouched: <code>{e(other_cookies)}</code></p>")

    parts.append("</body></html>\n")
    return "\n".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description="sessiongate demo application")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: only the proxy "
                             "may reach this app)")
    parser.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    parser.add_argument("--name", default="app",
                        help="this instance's name, shown on every page (default app)")
    args = parser.parse_args(argv)
    DemoApp.name = args.name

    server = ThreadingHTTPServer((args.bind, args.port), DemoApp)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"demo app listening on http://{host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
