<?php
// An application that trusts sessiongate's session headers only when the
// signed assertion proves they came from sessiongate. Plain PHP, no library:
// hash_hmac() for HS256, ext-sodium for EdDSA (both in Debian's php-cli).
//
//     ASSERTION_ALG=HS256 ASSERTION_KEYS_FILE=secrets.txt php -S 127.0.0.1:8002 app.php
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
declare(strict_types=1);

final class Refused extends Exception {}

function env(string $name, ?string $default = null): string {
    $value = getenv($name);
    if ($value === false || $value === '') {
        if ($default === null) {
            throw new RuntimeException("$name is not set");
        }
        return $default;
    }
    return $value;
}

/** A request header, by its HTTP name (X-Session-Id: HTTP_X_SESSION_ID). */
function request_header(string $name): ?string {
    return $_SERVER['HTTP_' . strtoupper(str_replace('-', '_', $name))] ?? null;
}

/** sessiongate's key ID: the first 8 bytes of SHA-256, in hex. */
function kid(string $material): string {
    return substr(hash('sha256', $material), 0, 16);
}

function base64url_decode(string $text): string {
    $bytes = base64_decode(strtr($text, '-_', '+/'), true);
    if ($bytes === false || !preg_match('/^[A-Za-z0-9_-]*$/', $text)) {
        throw new Refused('not base64url');
    }
    return $bytes;
}

/** [kid => key] for every key in the file. Several keys: key rotation. */
function load_keys(string $alg, string $path): array {
    $text = file_get_contents($path);
    $keys = [];
    if ($alg === 'HS256') {
        foreach (preg_split('/\r?\n/', $text) as $secret) { // the whole line is the secret
            if ($secret !== '') {
                $keys[kid($secret)] = $secret;
            }
        }
    } else {
        // An Ed25519 public key's SPKI DER is this 12-byte prefix, then the raw
        // 32-byte key (what sodium wants).
        $prefix = hex2bin('302a300506032b6570032100');
        preg_match_all('/-----BEGIN PUBLIC KEY-----(.+?)-----END PUBLIC KEY-----/s', $text, $pems);
        foreach ($pems[1] as $body) {
            $der = base64_decode(preg_replace('/\s+/', '', $body), true);
            if ($der === false || strlen($der) !== 44 || substr($der, 0, 12) !== $prefix) {
                throw new RuntimeException("$path: not an Ed25519 public key");
            }
            $raw = substr($der, 12);
            $keys[kid($raw)] = $raw;
        }
    }
    if ($keys === []) {
        throw new RuntimeException("$path: no $alg key");
    }
    return $keys;
}

/** The token's claims, if it was made by sessiongate for this very request. */
function verify(string $token, string $alg, array $keys, int $leeway): array {
    $parts = explode('.', $token);
    if (count($parts) !== 3) {
        throw new Refused('not a compact JWS');
    }
    [$header64, $claims64, $signature64] = $parts;
    $header = json_decode(base64url_decode($header64), true);
    // Pin the algorithm: the token's "alg" must be ours, it never chooses.
    // This refuses "none" and an HS256 token made with an EdDSA public key.
    if (!is_array($header) || ($header['alg'] ?? null) !== $alg) {
        throw new Refused('alg: not ' . $alg);
    }
    $key = is_string($header['kid'] ?? null) ? ($keys[$header['kid']] ?? null) : null;
    if ($key === null) {
        throw new Refused('unknown kid: not signed by one of our keys');
    }
    $signed = "$header64.$claims64";
    $signature = base64url_decode($signature64);
    $valid = $alg === 'HS256'
        ? hash_equals(hash_hmac('sha256', $signed, $key, true), $signature) // constant time
        : strlen($signature) === SODIUM_CRYPTO_SIGN_BYTES
            && sodium_crypto_sign_verify_detached($signature, $signed, $key);
    if (!$valid) {
        throw new Refused('signature verification failed');
    }
    // Signed by sessiongate: now read the claims.
    $claims = json_decode(base64url_decode($claims64), true);
    if (!is_array($claims) || !is_int($claims['iat'] ?? null) || !is_int($claims['exp'] ?? null)) {
        throw new Refused('claims: iat and exp required');
    }
    if ($claims['exp'] <= time() - $leeway) {
        throw new Refused('expired');
    }
    // Bound to this request: a token copied from another request is useless.
    $expected = [
        'aud' => request_header('Host'),
        'htm' => $_SERVER['REQUEST_METHOD'],
        'htu' => $_SERVER['REQUEST_URI'],
        'sid' => request_header(env('SESSION_ID_HEADER', 'X-Session-Id')),
    ];
    foreach ($expected as $claim => $value) {
        if (!isset($claims[$claim], $value) || $claims[$claim] !== $value) {
            throw new Refused("$claim: made for another request");
        }
    }
    return $claims;
}

function reply(int $status, array $body): void {
    http_response_code($status);
    header('Content-Type: application/json');
    echo json_encode($body, JSON_UNESCAPED_SLASHES), "\n";
}

$alg = env('ASSERTION_ALG');
if ($alg !== 'HS256' && $alg !== 'EdDSA') {
    throw new RuntimeException('ASSERTION_ALG must be HS256 or EdDSA');
}
$keys = load_keys($alg, env('ASSERTION_KEYS_FILE'));
$token = request_header(env('ASSERTION_HEADER', 'X-Session-Assertion'));
try {
    if ($token === null) {
        throw new Refused('no assertion header');
    }
    $claims = verify($token, $alg, $keys, (int) env('ASSERTION_LEEWAY', '5'));
} catch (Refused | JsonException | SodiumException $e) {
    reply(401, ['verified' => false, 'error' => $e->getMessage(), 'assertion' => $token]);
    return;
}
// Only now are the session's claims trusted.
if (parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH) === '/login') {
    header('X-Session-Set: user=alice'); // sessiongate stores it
}
reply(200, [
    'verified' => true,
    'sid' => $claims['sid'],
    'sub' => $claims['sub'] ?? null,
    'data' => (object) ($claims['data'] ?? []), // {} stays an object
    'assertion' => $token,
]);
