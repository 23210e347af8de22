#!/usr/bin/env python3
"""An application that trusts sessiongate's session headers only when the
signed assertion proves they came from sessiongate (PyJWT).

    ASSERTION_ALG=HS256 ASSERTION_KEYS_FILE=secrets.txt python3 app.py 8001

Environment:
    ASSERTION_ALG        HS256 or EdDSA: the one algorithm accepted (required)
    ASSERTION_KEYS_FILE  HS256: one secret per line; EdDSA: one or more PEM
                         public keys, concatenated (required)
    ASSERTION_HEADER     the header carrying the token (X-Session-Assertion)
    SESSION_ID_HEADER    the session ID header (X-Session-Id)
    ASSERTION_LEEWAY     seconds of clock skew allowed on `exp` (5)

Every request gets JSON: 200 {"verified": true, "sub", "data", ...} when the
assertion holds, else 401 {"verified": false, "error", "assertion"}. GET /login,
once verified, stores user=alice in the session (X-Session-Set), standing in
for a real login form.

Debian packages: python3-jwt, and python3-cryptography for EdDSA.
"""

import hashlib
import json
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt  # PyJWT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

HEADER = os.environ.get("ASSERTION_HEADER", "X-Session-Assertion")
SID_HEADER = os.environ.get("SESSION_ID_HEADER", "X-Session-Id")
ALG = os.environ["ASSERTION_ALG"]
LEEWAY = int(os.environ.get("ASSERTION_LEEWAY", "5"))
if ALG not in ("HS256", "EdDSA"):
    sys.exit("ASSERTION_ALG must be HS256 or EdDSA")


def kid(material: bytes) -> str:
    """sessiongate's key ID: the first 8 bytes of SHA-256, in hex."""
    return hashlib.sha256(material).hexdigest()[:16]


def load_keys(path: str) -> dict:
    """{kid: key} for every key in the file. Several keys: key rotation."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    keys = {}
    if ALG == "HS256":
        for secret in text.splitlines():  # the whole line is the secret
            if secret:
                keys[kid(secret.encode())] = secret.encode()
    else:
        pems = re.findall(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", text, re.S)
        for pem in pems:
            key = serialization.load_pem_public_key(pem.encode())
            if not isinstance(key, Ed25519PublicKey):
                sys.exit(f"{path}: not an Ed25519 public key")
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            keys[kid(raw)] = key
    if not keys:
        sys.exit(f"{path}: no {ALG} key")
    return keys


KEYS = load_keys(os.environ["ASSERTION_KEYS_FILE"])


class Refused(Exception):
    pass


def verify(token: str, method: str, target: str, host: str, sid: str) -> dict:
    """The token's claims, if it was made by sessiongate for this very request."""
    # The header is unverified here: it only picks the key. The algorithm is
    # pinned below (algorithms=[ALG]), never taken from the token.
    key_id = jwt.get_unverified_header(token).get("kid")
    key = KEYS.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        raise Refused("unknown kid: not signed by one of our keys")
    claims = jwt.decode(
        token,
        key,
        algorithms=[ALG],  # refuses "none" and any other algorithm
        audience=host,  # aud == the Host header we received
        leeway=LEEWAY,  # exp checked, with this much clock skew
        options={"require": ["exp", "iat", "aud", "sid", "htm", "htu"]},
    )
    # Bound to this request: a token copied from another request is useless.
    if claims["htm"] != method:
        raise Refused("htm: made for another method")
    if claims["htu"] != target:
        raise Refused("htu: made for another request target")
    if claims["sid"] != sid:
        raise Refused("sid: made for another session")
    return claims


class Handler(BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)  # the body is not used
        token = self.headers.get(HEADER)
        try:
            if token is None:
                raise Refused(f"no {HEADER} header")
            if len(self.headers.get_all(HEADER)) > 1 or len(self.headers.get_all(SID_HEADER) or []) > 1:
                raise Refused("header sent twice")
            claims = verify(token, self.command, self.path, self.headers.get("Host"), self.headers.get(SID_HEADER))
        except (Refused, jwt.InvalidTokenError, ValueError) as e:
            return self.reply(401, {"verified": False, "error": str(e), "assertion": token})
        # Only now are the session's claims trusted.
        extra = {}
        if self.path.split("?")[0] == "/login":
            extra["X-Session-Set"] = "user=alice"  # sessiongate stores it
        self.reply(
            200,
            {"verified": True, "sid": claims["sid"], "sub": claims.get("sub"),
             "data": claims.get("data", {}), "assertion": token},
            extra,
        )

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer

    def reply(self, status, body, headers=None):
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8001
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()
