//! When to renew a credential: `notAfter - renewBefore` (by default a third of the lifetime
//! before the end, as cert-manager does), moved earlier by a jitter that is fixed for each
//! object, so that a thousand certificates issued in the same second do not all renew in the
//! same second either, and a restarted controller computes the same times again.
//!
//! The lifetime is counted from the moment of issuance, not from `notBefore` (which a signer
//! back-dates for clock skew), and the renewal never comes sooner after issuance than
//! [`renewal_floor`]: whatever `validity`, `renewBefore` and the jitter are, a fresh credential
//! is never due at once, so no input can make the controller reissue without pause.

use std::time::Duration;

use time::OffsetDateTime;

/// The largest jitter ever applied.
const JITTER_CAP: Duration = Duration::from_secs(10 * 60);

/// The shortest time between an issuance and the renewal it schedules.
pub const MIN_RENEWAL_FLOOR: Duration = Duration::from_secs(60);

/// The shortest validity a certificate may be asked for: twice the floor, so that a renewal
/// always comes before the end.
pub const MIN_VALIDITY: Duration = Duration::from_secs(2 * 60);

/// The jitter window for a given renewBefore: a tenth of it, at most ten minutes.
pub fn max_jitter(renew_before: Duration) -> Duration {
    (renew_before / 10).min(JITTER_CAP)
}

/// The earliest renewal after an issuance, for a credential living `lifetime`: a tenth of the
/// lifetime, at least [`MIN_RENEWAL_FLOOR`].
pub fn renewal_floor(lifetime: Duration) -> Duration {
    (lifetime / 10).max(MIN_RENEWAL_FLOOR)
}

/// The `renewBefore` in force: the one asked for when it is shorter than the lifetime and not
/// zero, else (as documented) the default, a third of the lifetime.
pub fn effective_renew_before(lifetime: Duration, renew_before: Option<Duration>) -> Duration {
    match renew_before {
        Some(rb) if rb < lifetime && !rb.is_zero() => rb,
        _ => lifetime / 3,
    }
}

/// The time to renew a credential issued at `issued_at` and valid until `not_after`.
///
/// `jitter_key` (for example the object's UID) picks the jitter: the same key gives the same
/// time. The result is never after `not_after - renewBefore` unless the floor pushes it there,
/// and never earlier than `issued_at + renewal_floor(lifetime)`; a lifetime shorter than the
/// floor renews at its end.
pub fn renewal_time(
    issued_at: OffsetDateTime,
    not_after: OffsetDateTime,
    renew_before: Option<Duration>,
    jitter_key: &str,
) -> OffsetDateTime {
    let lifetime: Duration = (not_after - issued_at).try_into().unwrap_or_default();
    let renew_before = effective_renew_before(lifetime, renew_before);
    let jitter = max_jitter(renew_before).mul_f64(fraction(jitter_key));
    let earliest = (issued_at + renewal_floor(lifetime)).min(not_after);
    (not_after - renew_before - jitter).max(earliest)
}

/// A number in [0, 1) fixed by `key`.
fn fraction(key: &str) -> f64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// A bound on how often one object may be written: at most `limit` writes in any `window`.
/// Pure: the caller passes the time, and keeps one budget per object.
#[derive(Debug, Clone, Default)]
pub struct WriteBudget {
    /// The times of the writes still inside the window, oldest first.
    recent: std::collections::VecDeque<OffsetDateTime>,
}

impl WriteBudget {
    /// Takes one write at `now` if the budget allows it (and records it); otherwise says when
    /// the next write will be allowed.
    pub fn take(
        &mut self,
        now: OffsetDateTime,
        limit: usize,
        window: Duration,
    ) -> Result<(), OffsetDateTime> {
        while self.recent.front().is_some_and(|t| *t + window <= now) {
            self.recent.pop_front();
        }
        if self.recent.len() < limit {
            self.recent.push_back(now);
            return Ok(());
        }
        // The oldest write leaves the window first.
        Err(self.recent.front().map_or(now, |t| *t + window))
    }

    /// Whether the budget holds no write inside the window ending at `now` (it may be dropped).
    pub fn is_spent_before(&self, now: OffsetDateTime, window: Duration) -> bool {
        self.recent.back().is_none_or(|t| *t + window <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);
    const HOUR: u64 = 3600;

    #[test]
    fn defaults_to_a_third_of_the_lifetime() {
        let end = T0 + Duration::from_secs(24 * HOUR);
        let at = renewal_time(T0, end, None, "uid-1");
        let latest = end - Duration::from_secs(8 * HOUR);
        assert!(
            at <= latest && at >= latest - Duration::from_secs(600),
            "{at}"
        );
    }

    #[test]
    fn over_long_renew_before_falls_back_to_the_default() {
        let end = T0 + Duration::from_secs(HOUR);
        let b = renewal_time(T0, end, None, "k");
        for rb in [HOUR, HOUR + 1, 2 * HOUR] {
            assert_eq!(renewal_time(T0, end, Some(Duration::from_secs(rb)), "k"), b);
        }
    }

    #[test]
    fn the_back_dated_not_before_does_not_count() {
        // A certificate back-dated five minutes, asked for one minute more than the minimum:
        // counted from notBefore, renewBefore 2m would fall before the issuance.
        let issued = T0 + Duration::from_secs(300);
        let end = issued + Duration::from_secs(180);
        let at = renewal_time(issued, end, Some(Duration::from_secs(120)), "k");
        assert_eq!(at, issued + MIN_RENEWAL_FLOOR);
    }

    #[test]
    fn keys_spread_renewals_over_the_window() {
        let end = T0 + Duration::from_secs(24 * HOUR);
        let times: std::collections::BTreeSet<_> = (0..1000)
            .map(|i| renewal_time(T0, end, None, &format!("uid-{i}")))
            .collect();
        // A thousand objects issued together fall on nearly a thousand distinct instants,
        // spread over most of the ten-minute window.
        assert!(times.len() > 990, "{}", times.len());
        let spread = *times.last().unwrap() - *times.first().unwrap();
        assert!(spread > time::Duration::minutes(9), "{spread}");
    }

    #[test]
    fn a_spent_budget_says_when_the_next_write_is_allowed() {
        let mut budget = WriteBudget::default();
        let window = Duration::from_secs(60);
        for s in 0..3 {
            assert!(budget.take(T0 + Duration::from_secs(s), 3, window).is_ok());
        }
        assert_eq!(
            budget.take(T0 + Duration::from_secs(10), 3, window),
            Err(T0 + window)
        );
        assert!(budget.take(T0 + window, 3, window).is_ok());
        assert!(!budget.is_spent_before(T0 + window, window));
        assert!(budget.is_spent_before(T0 + 2 * window + Duration::from_secs(2), window));
    }

    proptest! {
        /// The whole input space: any validity up to ten years (down to one second, below the
        /// minimum the controller accepts), any renewBefore (none, zero, up to twice the
        /// lifetime), any back-dating, any key.
        #[test]
        fn renewal_is_in_the_future_after_a_floor_and_deterministic(
            lifetime_s in 1u64..(10 * 8766 * HOUR),
            renew_before_s in proptest::option::of(0u64..(20 * 8766 * HOUR)),
            backdate_s in 0u64..600,
            key in ".{0,40}",
        ) {
            let issued = T0 + Duration::from_secs(backdate_s);
            let end = issued + Duration::from_secs(lifetime_s);
            let rb = renew_before_s.map(Duration::from_secs);
            let at = renewal_time(issued, end, rb, &key);
            prop_assert_eq!(at, renewal_time(issued, end, rb, &key));
            let lifetime = Duration::from_secs(lifetime_s);
            // Never due at once: at least the floor after issuance, or at the end of a
            // credential shorter than the floor.
            prop_assert!(at >= (issued + renewal_floor(lifetime)).min(end));
            prop_assert!(at > issued);
            prop_assert!(at <= end);
            // Before the end whenever the validity is at least the minimum.
            if lifetime >= MIN_VALIDITY {
                prop_assert!(at < end);
            }
            // renewBefore (or its default) is honoured unless the floor forbids it, and the
            // jitter stays inside its window.
            let effective = effective_renew_before(lifetime, rb);
            prop_assert!(effective < lifetime || lifetime.is_zero());
            if end - effective - max_jitter(effective) >= issued + renewal_floor(lifetime) {
                prop_assert!(at <= end - effective);
                prop_assert!(at >= end - effective - max_jitter(effective) - Duration::from_nanos(1));
            }
            // renewBefore at or above the validity behaves as the default.
            if rb.is_some_and(|r| r >= lifetime) {
                prop_assert_eq!(at, renewal_time(issued, end, None, &key));
            }
        }

        /// Whatever the times of the attempts, no window holds more writes than the limit,
        /// and a refused attempt is told a time inside the next window.
        #[test]
        fn a_budget_never_allows_more_than_its_limit_in_any_window(
            mut offsets_ms in proptest::collection::vec(0u64..600_000, 1..200),
            limit in 1usize..8,
            window_s in 1u64..120,
        ) {
            offsets_ms.sort_unstable();
            let window = Duration::from_secs(window_s);
            let mut budget = WriteBudget::default();
            let mut granted = Vec::new();
            for ms in offsets_ms {
                let now = T0 + Duration::from_millis(ms);
                match budget.take(now, limit, window) {
                    Ok(()) => granted.push(now),
                    Err(next) => {
                        prop_assert!(next > now);
                        prop_assert!(next <= now + window);
                    }
                }
            }
            for (i, start) in granted.iter().enumerate() {
                let inside = granted[i..].iter().take_while(|t| **t < *start + window).count();
                prop_assert!(inside <= limit, "{inside} writes within {window_s}s of {start}");
            }
        }
    }
}
