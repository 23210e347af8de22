//! Resident memory per session: fills the memory store with 1,000,000 sessions of
//! 64 bytes of encoded data each and reports the growth of VmRSS.
//!
//!     cargo bench --bench memory                 # 1,000,000 sessions
//!     SESSIONS=100000 cargo bench --bench memory
use std::time::{Duration, Instant};

use sessiongate::session::memory::MemoryStore;
use sessiongate::session::{Changes, Policy, SessionData, SessionStore};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --all-targets`) or with
    // a filter argument, this bench does nothing.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| !a.starts_with("--")) {
        return;
    }
    let n: usize = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let store = MemoryStore::new();
    let policy = Policy {
        idle_timeout: Duration::from_secs(3600),
        absolute_timeout: Duration::from_secs(86400),
        max_sessions: n,
        max_data_bytes: 4096,
        regenerate_grace: Duration::from_secs(10),
        max_per_user: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    // 64 bytes encoded: "user=" + 27 chars + "&role=" + 26 chars.
    let mut changes = Changes::default();
    changes
        .add_set(format!("user={}&role={}", "u".repeat(27), "r".repeat(26)).as_bytes())
        .expect("valid form");
    let sample = SessionData::default().with_changes(&changes);
    assert_eq!(sample.encoded_len(), 64);
    let before = rss_kib();
    let started = Instant::now();
    rt.block_on(async {
        for _ in 0..n {
            store
                .create(sample.clone(), &policy)
                .await
                .expect("memory store never fails");
        }
    });
    let elapsed = started.elapsed();
    let after = rss_kib();
    let grown = after.saturating_sub(before) as f64 * 1024.0;
    println!(
        "memory: {n} sessions x 64 B data: RSS {:.1} MiB -> {:.1} MiB, {:.0} bytes/session, \
         {:.1} MiB for 1M, filled in {:.2?} ({:.0} ns/insert)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        grown / n as f64,
        grown / n as f64 * 1e6 / 1048576.0,
        elapsed,
        elapsed.as_nanos() as f64 / n as f64
    );
    assert_eq!(store.len(), n);
}
