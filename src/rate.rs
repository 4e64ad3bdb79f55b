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

#[cfg(test)]
mod tests {
    use super::*;

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
