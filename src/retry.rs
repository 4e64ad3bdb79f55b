//! What to do after a model call fails: retry the same candidate after a wait, fall over to the next candidate, or give up; a pure policy that honours the provider's `retry-after`.

use crate::llm::UpstreamError;

/// The decision after a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Call the same candidate again after this many ms.
    Retry { after_ms: u64 },
    /// Move to the candidate at this index (its attempts start from zero).
    FallOver { to: usize },
    /// End the turn with the error.
    GiveUp,
}

/// Bounds of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries per candidate (`UPSTREAM_RETRIES`).
    pub max_retries: u32,
    /// First backoff; it doubles with each retry.
    pub base_ms: u64,
    /// The longest wait worth taking within a turn: a provider asking for longer is left for
    /// the next candidate rather than waited for.
    pub cap_ms: u64,
}

impl RetryPolicy {
    /// The gateway's policy with `max_retries` retries per candidate.
    pub fn new(max_retries: u32) -> Self {
        RetryPolicy {
            max_retries,
            base_ms: 500,
            cap_ms: 10_000,
        }
    }

    /// Decides after `error` on the candidate at `candidate` (of `candidates`), which already
    /// had `attempts` retries. `before_output`: nothing of this call reached a client, so
    /// trying again cannot show anything twice.
    pub fn next(
        &self,
        error: &UpstreamError,
        before_output: bool,
        attempts: u32,
        candidate: usize,
        candidates: usize,
    ) -> Next {
        if !before_output || !error.kind.retryable() {
            return Next::GiveUp;
        }
        let fall_over = || {
            if candidate + 1 < candidates {
                Next::FallOver { to: candidate + 1 }
            } else {
                Next::GiveUp
            }
        };
        if attempts >= self.max_retries {
            return fall_over();
        }
        let backoff = self
            .base_ms
            .saturating_mul(1u64 << attempts.min(16))
            .min(self.cap_ms);
        match error.retry_after_ms {
            Some(wait) if wait > self.cap_ms => fall_over(),
            Some(wait) => Next::Retry { after_ms: wait },
            None => Next::Retry { after_ms: backoff },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::UpstreamErrorKind;

    fn error(kind: UpstreamErrorKind, retry_after_ms: Option<u64>) -> UpstreamError {
        UpstreamError {
            retry_after_ms,
            ..UpstreamError::new(kind, "x")
        }
    }

    #[test]
    fn retries_with_doubling_backoff_then_falls_over_then_gives_up() {
        let p = RetryPolicy::new(2);
        let e = error(UpstreamErrorKind::Overloaded, None);
        assert_eq!(p.next(&e, true, 0, 0, 2), Next::Retry { after_ms: 500 });
        assert_eq!(p.next(&e, true, 1, 0, 2), Next::Retry { after_ms: 1000 });
        assert_eq!(p.next(&e, true, 2, 0, 2), Next::FallOver { to: 1 });
        assert_eq!(p.next(&e, true, 0, 1, 2), Next::Retry { after_ms: 500 });
        assert_eq!(p.next(&e, true, 2, 1, 2), Next::GiveUp);
    }

    #[test]
    fn honours_retry_after_and_skips_waits_too_long_for_a_turn() {
        let p = RetryPolicy::new(2);
        let soon = error(UpstreamErrorKind::RateLimited, Some(1500));
        assert_eq!(p.next(&soon, true, 0, 0, 1), Next::Retry { after_ms: 1500 });
        let late = error(UpstreamErrorKind::RateLimited, Some(60_000));
        assert_eq!(p.next(&late, true, 0, 0, 2), Next::FallOver { to: 1 });
        assert_eq!(p.next(&late, true, 0, 0, 1), Next::GiveUp);
    }

    #[test]
    fn never_retries_what_cannot_help_or_what_a_client_already_saw() {
        let p = RetryPolicy::new(5);
        for kind in [
            UpstreamErrorKind::Auth,
            UpstreamErrorKind::BadRequest,
            UpstreamErrorKind::ContextTooLong,
        ] {
            assert_eq!(p.next(&error(kind, None), true, 0, 0, 3), Next::GiveUp);
        }
        let broke = error(UpstreamErrorKind::Network, None);
        assert_eq!(p.next(&broke, false, 0, 0, 3), Next::GiveUp);
        assert_eq!(p.next(&broke, true, 0, 0, 3), Next::Retry { after_ms: 500 });
    }

    #[test]
    fn no_retries_configured_goes_straight_to_the_next_candidate() {
        let p = RetryPolicy::new(0);
        let e = error(UpstreamErrorKind::Server, None);
        assert_eq!(p.next(&e, true, 0, 0, 2), Next::FallOver { to: 1 });
        assert_eq!(p.next(&e, true, 0, 1, 2), Next::GiveUp);
    }

    #[test]
    fn backoff_is_capped() {
        let p = RetryPolicy::new(10);
        let e = error(UpstreamErrorKind::Server, None);
        assert_eq!(p.next(&e, true, 9, 0, 1), Next::Retry { after_ms: 10_000 });
    }
}
