<?php
// A PHP page behind sessiongate: no session_start(), no session files, no
// shared session storage between servers. The proxy passes the session in
// X-Session-Data and stores what the page sends back in X-Session-Set.

// "count=3&user=alice" (form-urlencoded, keys sorted; absent when empty).
// Note: parse_str turns "." and " " in key names into "_": keep keys simple.
parse_str($_SERVER['HTTP_X_SESSION_DATA'] ?? '', $session);

// Log in: store the name, and move the session to a new id (fixation defence).
if ($_SERVER['REQUEST_METHOD'] === 'POST' && isset($_POST['username'])) {
    header('X-Session-Set: ' . http_build_query(['user' => $_POST['username']]));
    header('X-Session-Regenerate: true');
    header('Location: /', true, 303);
    exit;
}

// Log out: the proxy deletes the session and expires the cookie.
if (isset($_GET['logout'])) {
    header('X-Session-Destroy: true');
    header('Location: /', true, 303);
    exit;
}

$count = (int) ($session['count'] ?? 0) + 1;
// false: add a header rather than replace one; X-Session-Set may repeat.
header('X-Session-Set: ' . http_build_query(['count' => $count]), false);
header('Cache-Control: no-store');

$user = $session['user'] ?? null;
?>
<!doctype html>
<title>counter</title>
<p>Visit number <?= $count ?> in this session.</p>
<?php if ($user !== null): ?>
  <p>Signed in as <?= htmlspecialchars($user, ENT_QUOTES, 'UTF-8') ?>. <a href="?logout=1">Log out</a></p>
<?php else: ?>
  <form method="post"><input name="username" maxlength="40" required> <button>Log in</button></form>
<?php endif; ?>
