//! Per-user rate limit as a GCRA (generic cell rate algorithm): one number of state, a burst of up to N events, refilled at N a minute.
//!
//! This is a token bucket of capacity N refilled at N per minute, kept as the theoretical
//! arrival time of the next event (`tat`): one storage row per user, where a sliding log would
//! keep up to N timestamps. A flood gets N events at once and then one per 60/N s.

use serde::{Deserialize, Serialize};

/// The window a limit is stated over.
pub const WINDOW_MS: i64 = 60_000;

/// One user's limiter state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gcra {
    /// Theoretical arrival time of the next event, ms since the epoch (0: never used).
    pub tat: i64,
}

/// The answer to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted; the state changed and must be stored.
    Admitted,
    /// Refused; nothing changed. Retry after this many ms.
    Refused { retry_after_ms: i64 },
}

impl Gcra {
    /// Admits one event at `now_ms` under `per_minute`, or says when the next one is admitted.
    pub fn admit(&mut self, now_ms: i64, per_minute: u32) -> Admission {
        let per_minute = i64::from(per_minute.max(1));
        // Rounded up, so N events never fit in less than a minute.
        let interval = (WINDOW_MS + per_minute - 1) / per_minute;
        let tat = self.tat.max(now_ms);
        let next = tat + interval;
        let allowed_at = next - interval * per_minute;
        if allowed_at > now_ms {
            return Admission::Refused {
                retry_after_ms: allowed_at - now_ms,
            };
        }
        self.tat = next;
        Admission::Admitted
    }
}

/// The shard (of `shards`) a user's state lives in: FNV-1a of the id, stable across releases.
pub fn shard_of(user: &str, shards: u32) -> u32 {
    let hash = user.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash % shards.max(1)
}

/// A shard's users in memory: their states, and which changed since the last write.
///
/// A refusal changes nothing and writes nothing; admissions are written in coalesced batches
/// (the caller waits, then takes [`ShardState::take_dirty`]).
#[derive(Debug, Default)]
pub struct ShardState {
    users: std::collections::HashMap<String, Gcra>,
    dirty: std::collections::HashSet<String>,
    write_pending: bool,
}

impl ShardState {
    /// A user's state known to this instance.
    pub fn known(&self, user: &str) -> Option<Gcra> {
        self.users.get(user).copied()
    }

    /// Keeps a state read from storage, so the user's next event does not read it again.
    pub fn warm(&mut self, user: String, gcra: Gcra) {
        self.users.insert(user, gcra);
    }

    /// Admits one event of `user`, whose state is `gcra`, at `now_ms` under `per_minute`. With
    /// more than `max_users` in memory, fully refilled states (the same as none) are dropped
    /// first. Answers the admission, and whether a write must be scheduled (none is yet).
    pub fn admit(
        &mut self,
        user: String,
        mut gcra: Gcra,
        now_ms: i64,
        per_minute: u32,
        max_users: usize,
    ) -> (Admission, bool) {
        let admission = gcra.admit(now_ms, per_minute);
        if admission != Admission::Admitted {
            return (admission, false);
        }
        if self.users.len() >= max_users {
            self.users.retain(|_, g| g.tat > now_ms);
        }
        self.users.insert(user.clone(), gcra);
        self.dirty.insert(user);
        let schedule = !self.write_pending;
        self.write_pending = true;
        (admission, schedule)
    }

    /// The states to write now, each once; the next admission schedules the next write.
    pub fn take_dirty(&mut self) -> Vec<(String, i64)> {
        self.write_pending = false;
        let dirty: Vec<String> = self.dirty.drain().collect();
        dirty
            .into_iter()
            .filter_map(|u| self.users.get(&u).map(|g| (u, g.tat)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_writes_admitted_users_once_per_batch_and_never_refusals() {
        let mut shard = ShardState::default();
        let (a, schedule) = shard.admit("ann".into(), Gcra::default(), 0, 1, 100);
        assert_eq!((a, schedule), (Admission::Admitted, true));
        let ann = shard.known("ann").unwrap();
        let (refused, schedule) = shard.admit("ann".into(), ann, 1, 1, 100);
        assert!(matches!(refused, Admission::Refused { .. }) && !schedule);
        let (_, schedule) = shard.admit("bob".into(), Gcra::default(), 1, 1, 100);
        assert!(!schedule, "one write is pending already");
        let mut written = shard.take_dirty();
        written.sort();
        assert_eq!(written, [("ann".into(), 60_000), ("bob".into(), 60_001)]);
        assert!(shard.take_dirty().is_empty());
        let (_, schedule) = shard.admit("cid".into(), Gcra::default(), 2, 1, 100);
        assert!(schedule);
    }

    #[test]
    fn a_full_shard_forgets_refilled_users_first() {
        let mut shard = ShardState::default();
        shard.admit("old".into(), Gcra::default(), 0, 60, 2);
        shard.admit("recent".into(), Gcra::default(), 5_000, 1, 2);
        // At 10 s, "old" (one event of 60 a minute, refilled after 1 s) is the same as no state.
        shard.admit("new".into(), Gcra::default(), 10_000, 60, 2);
        assert!(shard.known("old").is_none());
        assert!(shard.known("recent").is_some() && shard.known("new").is_some());
    }

    fn admitted(g: &mut Gcra, now: i64, limit: u32) -> bool {
        g.admit(now, limit) == Admission::Admitted
    }

    #[test]
    fn a_burst_of_the_limit_passes_then_one_more_is_refused() {
        let mut g = Gcra::default();
        for _ in 0..5 {
            assert!(admitted(&mut g, 1_000_000, 5));
        }
        match g.admit(1_000_000, 5) {
            Admission::Refused { retry_after_ms } => assert_eq!(retry_after_ms, 12_000),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_refusal_changes_nothing() {
        let mut g = Gcra::default();
        for _ in 0..2 {
            assert!(admitted(&mut g, 0, 2));
        }
        let before = g;
        for _ in 0..200 {
            assert!(!admitted(&mut g, 10, 2));
        }
        assert_eq!(g, before);
    }

    #[test]
    fn capacity_returns_at_the_limit_s_pace() {
        let mut g = Gcra::default();
        for _ in 0..60 {
            assert!(admitted(&mut g, 0, 60));
        }
        assert!(!admitted(&mut g, 999, 60));
        assert!(admitted(&mut g, 1_000, 60));
        assert!(!admitted(&mut g, 1_000, 60));
    }

    #[test]
    fn a_flood_gets_the_burst_then_the_refill_rate() {
        // An event every 100 ms for five minutes against 30 a minute: the burst of 30, then one
        // every 2 s; never more than the burst plus the refill in any minute.
        let mut g = Gcra::default();
        let times: Vec<i64> = (0..3000)
            .map(|k| k * 100)
            .filter(|&t| admitted(&mut g, t, 30))
            .collect();
        assert_eq!(times.len(), 30 + 300_000 / 2_000 - 1);
        for (k, &t) in times.iter().enumerate() {
            let in_window = times[k..]
                .iter()
                .take_while(|&&u| u - t < WINDOW_MS)
                .count();
            assert!(
                in_window < 2 * 30,
                "{in_window} events in the minute from {t}"
            );
        }
        let late: Vec<i64> = times.iter().copied().filter(|&t| t >= 60_000).collect();
        assert!(
            late.windows(2).all(|w| w[1] - w[0] >= 2_000),
            "one per 2 s once the burst is spent"
        );
    }

    #[test]
    fn users_spread_over_shards_the_same_way_every_time() {
        assert_eq!(shard_of("", 16), 0x811c_9dc5 % 16);
        assert_eq!(shard_of("alice", 16), shard_of("alice", 16));
        let mut seen = [0u32; 16];
        for k in 0..1600 {
            seen[shard_of(&format!("user-{k}"), 16) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    #[test]
    fn an_idle_user_starts_with_a_full_burst() {
        let mut g = Gcra::default();
        for _ in 0..3 {
            assert!(admitted(&mut g, 0, 3));
        }
        for _ in 0..3 {
            assert!(admitted(&mut g, 120_000, 3));
        }
    }
}
