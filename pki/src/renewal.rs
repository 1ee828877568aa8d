//! When to renew a certificate: `notAfter - renewBefore` (by default a third of the lifetime
//! before the end, as cert-manager does), moved earlier by a jitter that is fixed for each
//! object, so that a thousand certificates issued in the same second do not all renew in the
//! same second either, and a restarted controller computes the same times again.

use std::time::Duration;

use time::OffsetDateTime;

/// The largest jitter ever applied.
const JITTER_CAP: Duration = Duration::from_secs(10 * 60);

/// The jitter window for a given renewBefore: a tenth of it, at most ten minutes.
pub fn max_jitter(renew_before: Duration) -> Duration {
    (renew_before / 10).min(JITTER_CAP)
}

/// The time to renew a certificate valid from `not_before` to `not_after`.
///
/// `renew_before` defaults to a third of the lifetime; a value that is not shorter than the
/// lifetime falls back to that default too (a certificate would otherwise be due at once).
/// `jitter_key` (for example the object's UID) picks the jitter: the same key gives the same
/// time. The result is never after `not_after - renew_before`, and never earlier than halfway
/// from `not_before` to that point.
pub fn renewal_time(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    renew_before: Option<Duration>,
    jitter_key: &str,
) -> OffsetDateTime {
    let lifetime: Duration = (not_after - not_before).try_into().unwrap_or_default();
    let default = lifetime / 3;
    let renew_before = match renew_before {
        Some(rb) if rb < lifetime && !rb.is_zero() => rb,
        _ => default,
    };
    // The jitter never eats more than half of the time before the renewal point, so that a
    // renewBefore close to the lifetime cannot make a fresh credential due at once.
    let window = max_jitter(renew_before).min((lifetime - renew_before) / 2);
    let jitter = window.mul_f64(fraction(jitter_key));
    (not_after - renew_before - jitter).max(not_before)
}

/// A number in [0, 1) fixed by `key`.
fn fraction(key: &str) -> f64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    #[test]
    fn defaults_to_a_third_of_the_lifetime() {
        let end = T0 + Duration::from_secs(24 * 3600);
        let at = renewal_time(T0, end, None, "uid-1");
        let latest = end - Duration::from_secs(8 * 3600);
        assert!(
            at <= latest && at >= latest - Duration::from_secs(600),
            "{at}"
        );
    }

    #[test]
    fn over_long_renew_before_falls_back_to_the_default() {
        let end = T0 + Duration::from_secs(3600);
        let a = renewal_time(T0, end, Some(Duration::from_secs(7200)), "k");
        let b = renewal_time(T0, end, None, "k");
        assert_eq!(a, b);
    }

    #[test]
    fn keys_spread_renewals_over_the_window() {
        let end = T0 + Duration::from_secs(24 * 3600);
        let times: std::collections::BTreeSet<_> = (0..1000)
            .map(|i| renewal_time(T0, end, None, &format!("uid-{i}")))
            .collect();
        // A thousand objects issued together fall on nearly a thousand distinct instants,
        // spread over most of the ten-minute window.
        assert!(times.len() > 990, "{}", times.len());
        let spread = *times.last().unwrap() - *times.first().unwrap();
        assert!(spread > time::Duration::minutes(9), "{spread}");
    }

    proptest! {
        #[test]
        fn renewal_is_bounded_and_deterministic(
            lifetime_s in 1u64..(10 * 8766 * 3600),
            renew_before_s in proptest::option::of(0u64..(20 * 8766 * 3600)),
            key in ".{0,40}",
        ) {
            let end = T0 + Duration::from_secs(lifetime_s);
            let rb = renew_before_s.map(Duration::from_secs);
            let at = renewal_time(T0, end, rb, &key);
            prop_assert_eq!(at, renewal_time(T0, end, rb, &key));
            prop_assert!(at >= T0);
            prop_assert!(at < end);
            let lifetime = Duration::from_secs(lifetime_s);
            let effective = match rb { Some(r) if r < lifetime && !r.is_zero() => r, _ => lifetime / 3 };
            prop_assert!(at <= end - effective);
            prop_assert!(at >= end - effective - max_jitter(effective) - Duration::from_nanos(1));
            // Halfway to the renewal point at the earliest: never due at once.
            prop_assert!(at >= T0 + (lifetime - effective) / 2 - Duration::from_nanos(1));
        }
    }
}
