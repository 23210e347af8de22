//! What a store counts about its sessions, for `/metrics`. Each store owns one
//! set and counts what it decides (a session stored, destroyed, moved, expired,
//! evicted, a write refused as too large); nothing above it counts these again.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A session event a store counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionCount {
    Created,
    Destroyed,
    Regenerated,
    /// Timed out, seen by the store (Redis expires its keys unseen).
    Expired,
    /// Evicted at `max_sessions` (the memory store).
    Evicted,
    /// A write refused as over `max_data_bytes`.
    RefusedTooLarge,
    /// A session served from the Redis store's near cache.
    NearHit,
    /// A lookup the near cache could not serve (it went to Redis).
    NearMiss,
    /// Near-cache entries dropped because Redis told of a change, or the
    /// connection that tracked them was lost.
    NearInvalidated,
}

impl SessionCount {
    /// Every event, in the order of their discriminants.
    pub const ALL: [SessionCount; 9] = [
        SessionCount::Created,
        SessionCount::Destroyed,
        SessionCount::Regenerated,
        SessionCount::Expired,
        SessionCount::Evicted,
        SessionCount::RefusedTooLarge,
        SessionCount::NearHit,
        SessionCount::NearMiss,
        SessionCount::NearInvalidated,
    ];
}

/// Cells per counter. Each thread adds to its own, so a flood of new visitors on
/// every core counts its creations (and evictions) without moving a cache line
/// between cores; a read sums the cells.
const SHARDS: usize = 8;

/// One shard's counters, one cache line to themselves.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Cells([AtomicU64; SessionCount::ALL.len()]);

/// This thread's shard, handed out round-robin on first use.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// One counter per [`SessionCount`], shared by the store and the metrics.
#[derive(Debug, Default)]
pub struct SessionCounters {
    shards: [Cells; SHARDS],
}

impl SessionCounters {
    pub fn add(&self, what: SessionCount, n: u64) {
        self.shards[shard()].0[what as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, what: SessionCount) -> u64 {
        let cell = |s: &Cells| s.0[what as usize].load(Ordering::Relaxed);
        self.shards.iter().map(cell).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_has_its_own_counter() {
        for (i, what) in SessionCount::ALL.into_iter().enumerate() {
            assert_eq!(what as usize, i);
        }
        let c = SessionCounters::default();
        c.add(SessionCount::Created, 2);
        c.add(SessionCount::Evicted, 1);
        std::thread::scope(|s| {
            for _ in 0..SHARDS + 1 {
                s.spawn(|| c.add(SessionCount::Created, 1));
            }
        });
        assert_eq!(c.get(SessionCount::Created), 2 + SHARDS as u64 + 1);
        assert_eq!(c.get(SessionCount::Evicted), 1);
        assert_eq!(c.get(SessionCount::Destroyed), 0);
    }
}
