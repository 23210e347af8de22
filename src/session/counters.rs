//! What a store counts about its sessions, for `/metrics`. Each store owns one
//! set and counts what it decides (a session stored, destroyed, moved, expired,
//! evicted, a write refused as too large); nothing above it counts these again.

use std::sync::atomic::{AtomicU64, Ordering};

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
}

impl SessionCount {
    /// Every event, in the order of their discriminants.
    pub const ALL: [SessionCount; 6] = [
        SessionCount::Created,
        SessionCount::Destroyed,
        SessionCount::Regenerated,
        SessionCount::Expired,
        SessionCount::Evicted,
        SessionCount::RefusedTooLarge,
    ];
}

/// One cache line to itself: during a flood every core counts creations, and no
/// other counter should share that line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Line(AtomicU64);

/// One counter per [`SessionCount`], shared by the store and the metrics.
#[derive(Debug, Default)]
pub struct SessionCounters {
    counts: [Line; SessionCount::ALL.len()],
}

impl SessionCounters {
    pub fn add(&self, what: SessionCount, n: u64) {
        self.counts[what as usize].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, what: SessionCount) -> u64 {
        self.counts[what as usize].0.load(Ordering::Relaxed)
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
        assert_eq!(c.get(SessionCount::Created), 2);
        assert_eq!(c.get(SessionCount::Evicted), 1);
        assert_eq!(c.get(SessionCount::Destroyed), 0);
    }
}
