"""A WSGI application behind sessiongate (any WSGI server: gunicorn, uWSGI,
mod_wsgi, or `python3 wsgi_app.py` for wsgiref on 127.0.0.1:3000).

No session middleware, no session table: the proxy passes the session in with
X-Session-Id / X-Session-New / X-Session-Data and stores what the response
sends back in X-Session-Set / -Remove / -Regenerate / -Destroy. Those response
headers never reach the browser. Standard library only.
"""

import html
from urllib.parse import parse_qsl, urlencode


def session_data(environ):
    """The session's data: X-Session-Data is form-urlencoded, keys sorted, and
    absent when the session is empty. WSGI names it HTTP_X_SESSION_DATA."""
    return dict(parse_qsl(environ.get("HTTP_X_SESSION_DATA", ""), keep_blank_values=True))


def app(environ, start_response):
    session = session_data(environ)
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "/")

    if method == "POST" and path == "/login":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        form = dict(parse_qsl(environ["wsgi.input"].read(min(size, 4096)).decode()))
        start_response("303 See Other", [
            ("Location", "/"),
            ("X-Session-Set", urlencode({"user": form.get("username", "")[:40]})),
            ("X-Session-Regenerate", "true"),   # new id at login: fixation defence
        ])
        return [b""]

    if path == "/logout":
        start_response("303 See Other", [("Location", "/"), ("X-Session-Destroy", "true")])
        return [b""]

    try:
        count = int(session.get("count", "0")) + 1
    except ValueError:
        count = 1
    user = session.get("user")
    body = f"<p>Visit number {count} in this session.</p>"
    if user:
        body += f'<p>Signed in as {html.escape(user)}. <a href="/logout">Log out</a></p>'
    else:
        body += ('<form method="post" action="/login"><input name="username" required>'
                 " <button>Log in</button></form>")
    start_response("200 OK", [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Cache-Control", "no-store"),
        ("X-Session-Set", urlencode({"count": count})),
    ])
    return [body.encode()]


# The same in Flask. Leave Flask's own `session` (a client-side cookie) unused:
#
#   from flask import Flask, request, redirect, make_response
#
#   flask_app = Flask(__name__)
#
#   def session_data():
#       return dict(parse_qsl(request.headers.get("X-Session-Data", ""),
#                             keep_blank_values=True))
#
#   @flask_app.get("/")
#   def index():
#       count = int(session_data().get("count", "0")) + 1
#       resp = make_response(f"<p>Visit number {count}.</p>")
#       resp.headers["X-Session-Set"] = urlencode({"count": count})
#       return resp
#
#   @flask_app.post("/login")
#   def login():
#       resp = redirect("/", code=303)
#       resp.headers["X-Session-Set"] = urlencode({"user": request.form["username"]})
#       resp.headers["X-Session-Regenerate"] = "true"
#       return resp
#
#   @flask_app.get("/logout")
#   def logout():
#       resp = redirect("/", code=303)
#       resp.headers["X-Session-Destroy"] = "true"
#       return resp


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    with make_server("127.0.0.1", 3000, app) as server:
        print("WSGI app on http://127.0.0.1:3000 (put sessiongate in front of it)")
        server.serve_forever()
