//! Active health checks: every server of a group with a `health` block is asked
//! `GET <path>` every `interval`, on a connection of its own; a `2xx` or `3xx`
//! within `timeout` is a good check. The checks follow reloads: a server added
//! is checked from the next tick, one removed is no longer checked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::HealthConfig;
use crate::h1::client::Pool;
use crate::pool::Endpoint;
use crate::proxy::State;

/// How often the checker looks for checks that are due.
const TICK: Duration = Duration::from_millis(100);

/// Runs the checks until `stop` turns true.
pub(crate) async fn run(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    // When each server (by its state's address) is due next.
    let mut due: HashMap<usize, Instant> = HashMap::new();
    loop {
        let settings = state.settings.load_full();
        let now = Instant::now();
        let mut seen = HashSet::new();
        for group in &settings.upstreams.groups {
            let Some(health) = &group.health else {
                continue;
            };
            for &i in &group.targets {
                let target = &settings.upstreams.targets[i];
                let key = Arc::as_ptr(&target.state) as usize;
                seen.insert(key);
                let next = due.entry(key).or_insert(now);
                if *next > now {
                    continue;
                }
                *next = now + health.interval;
                let server = target.state.clone();
                let endpoint = target.endpoint.clone();
                let host = target
                    .host
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or(&target.endpoint.authority)
                    .to_owned();
                let health = health.clone();
                tokio::spawn(async move {
                    let ok = check(endpoint, &host, &health).await;
                    server.checked(ok, &health);
                });
            }
        }
        due.retain(|key, _| seen.contains(key));
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One check: whether the server answers `GET path` with `2xx` or `3xx` in time.
async fn check(endpoint: Endpoint, host: &str, health: &HealthConfig) -> bool {
    let ask = async {
        let pool = Pool::new(endpoint);
        let mut conn = pool.connect().await.ok()?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sessiongate-health\r\nConnection: close\r\n\r\n",
            health.path
        );
        crate::io::send(&mut conn.io, request.as_bytes(), health.timeout)
            .await
            .ok()?;
        let deadline = Instant::now() + health.timeout;
        // The status line is all a check needs.
        while !conn.buf.contains(&b'\n') && conn.buf.len() < 1024 {
            if conn.fill_until(deadline).await.ok()? == 0 {
                return None;
            }
        }
        let line = conn.buf[..].split(|&b| b == b'\n').next()?;
        let status = line.strip_prefix(b"HTTP/1.")?.get(2..5)?;
        let ok = matches!(status[0], b'2' | b'3') && status.iter().all(u8::is_ascii_digit);
        Some(ok)
    };
    matches!(
        tokio::time::timeout(health.timeout, ask).await,
        Ok(Some(true))
    )
}
