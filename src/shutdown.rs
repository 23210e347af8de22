//! The stop signal every listener and connection watches: a `watch` flag that the
//! server turns true on SIGTERM or SIGINT. Below the server, the admin listener and
//! the HTTP/1 path, which all wait on it.

use tokio::sync::watch;

/// Completes once the stop flag turns true.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
