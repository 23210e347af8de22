// An application that trusts sessiongate's session headers only when the
// signed assertion proves they came from sessiongate (jose, by panva).
//
//     ASSERTION_ALG=HS256 ASSERTION_KEYS_FILE=secrets.txt node app.mjs 8003
//
// Environment:
//     ASSERTION_ALG        HS256 or EdDSA: the one algorithm accepted (required)
//     ASSERTION_KEYS_FILE  HS256: one secret per line; EdDSA: one or more PEM
//                          public keys, concatenated (required)
//     ASSERTION_HEADER     the header carrying the token (X-Session-Assertion)
//     SESSION_ID_HEADER    the session ID header (X-Session-Id)
//     ASSERTION_LEEWAY     seconds of clock skew allowed on `exp` (5)
//
// Every request gets JSON: 200 {"verified": true, "sub", "data", ...} when the
// assertion holds, else 401 {"verified": false, "error", "assertion"}.
// GET /login, once verified, stores user=alice in the session (X-Session-Set),
// standing in for a real login form.
//
// jose 4 (Debian's node-jose) to 6 (npm install jose) all work.
import { createHash, createPublicKey, createSecretKey } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";

// jose from node_modules when installed with npm, else Debian's package
// (an ES module import does not search NODE_PATH or /usr/share/nodejs).
const jose = await import("jose").catch((e) => {
  if (e.code !== "ERR_MODULE_NOT_FOUND") throw e;
  return import("/usr/share/nodejs/jose/dist/node/esm/index.js");
});

const HEADER = (process.env.ASSERTION_HEADER || "X-Session-Assertion").toLowerCase();
const SID_HEADER = (process.env.SESSION_ID_HEADER || "X-Session-Id").toLowerCase();
const ALG = process.env.ASSERTION_ALG;
const LEEWAY = Number(process.env.ASSERTION_LEEWAY || 5);
if (ALG !== "HS256" && ALG !== "EdDSA") throw new Error("ASSERTION_ALG must be HS256 or EdDSA");

/** sessiongate's key ID: the first 8 bytes of SHA-256, in hex. */
const kid = (material) => createHash("sha256").update(material).digest("hex").slice(0, 16);

/** kid => key for every key in the file. Several keys: key rotation. */
function loadKeys(path) {
  const text = readFileSync(path, "utf8");
  const keys = new Map();
  if (ALG === "HS256") {
    for (const secret of text.split(/\r?\n/)) { // the whole line is the secret
      if (secret) keys.set(kid(secret), createSecretKey(Buffer.from(secret)));
    }
  } else {
    for (const pem of text.match(/-----BEGIN PUBLIC KEY-----[^-]+-----END PUBLIC KEY-----/g) ?? []) {
      const key = createPublicKey(pem);
      if (key.asymmetricKeyType !== "ed25519") throw new Error(`${path}: not an Ed25519 public key`);
      const raw = key.export({ format: "der", type: "spki" }).subarray(-32); // the raw 32 bytes
      keys.set(kid(raw), key);
    }
  }
  if (keys.size === 0) throw new Error(`${path}: no ${ALG} key`);
  return keys;
}

const KEYS = loadKeys(process.env.ASSERTION_KEYS_FILE);

/** The token's claims, if it was made by sessiongate for this very request. */
async function verify(token, req) {
  const host = req.headers.host;
  if (!host) throw new Error("no Host header"); // jose skips aud when audience is unset
  const { payload } = await jose.jwtVerify(
    token,
    // The protected header only picks the key here; it is verified with it.
    (header) => {
      const key = KEYS.get(header.kid);
      if (!key) throw new Error("unknown kid: not signed by one of our keys");
      return key;
    },
    {
      algorithms: [ALG], // refuses "none" and any other algorithm
      audience: host, // aud == the Host header we received
      clockTolerance: LEEWAY, // exp checked, with this much clock skew
    },
  );
  // jose checks exp only when present: sessiongate always sends it.
  if (typeof payload.exp !== "number" || typeof payload.iat !== "number") {
    throw new Error("claims: iat and exp required");
  }
  // Bound to this request: a token copied from another request is useless.
  if (payload.htm !== req.method) throw new Error("htm: made for another method");
  if (payload.htu !== req.url) throw new Error("htu: made for another request target");
  if (payload.sid === undefined || payload.sid !== req.headers[SID_HEADER]) {
    throw new Error("sid: made for another session");
  }
  return payload;
}

function reply(res, status, body, headers = {}) {
  res.writeHead(status, { "Content-Type": "application/json", ...headers });
  res.end(JSON.stringify(body) + "\n");
}

const server = createServer(async (req, res) => {
  req.resume(); // the body is not used
  const token = req.headers[HEADER] ?? null;
  let claims;
  try {
    if (token === null) throw new Error("no assertion header");
    claims = await verify(token, req);
  } catch (e) {
    return reply(res, 401, { verified: false, error: e.message, assertion: token });
  }
  // Only now are the session's claims trusted.
  const headers = {};
  if (req.url.split("?")[0] === "/login") headers["X-Session-Set"] = "user=alice"; // sessiongate stores it
  reply(res, 200, {
    verified: true,
    sid: claims.sid,
    sub: claims.sub ?? null,
    data: claims.data ?? {},
    assertion: token,
  }, headers);
});

const port = Number(process.argv[2] || 8003);
server.listen(port, "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
