//! Durations written the Kubernetes way (Go's `time.ParseDuration`, as in `metav1.Duration`):
//! `90m`, `24h`, `1h30m`, `8766h`, `1.5h`. Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`.

use std::time::Duration;

use crate::{Error, Result};

/// The longest duration accepted anywhere: ten years. Longer credentials are not credentials.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 8766 * 3600);

const UNITS: [(&str, u128); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a positive duration such as `24h` or `1h30m`. Zero, negative, unit-less or
/// over-long values are errors that say what to write instead.
pub fn parse_duration(input: &str) -> Result<Duration> {
    let err = |reason: String| Error::Duration {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty; write for example `24h` or `90m`".into()));
    }
    if s.starts_with('-') {
        return Err(err("it must be positive".into()));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(err(format!(
                "expected a number at {rest:?}; write for example `24h`, `90m` or `1h30m`"
            )));
        }
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let Some(&(_, nanos_per_unit)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            let hint = match unit {
                "" => "a unit is missing".to_string(),
                "d" => "days are not a unit here; write hours (`7d` is `168h`)".to_string(),
                other => format!("unknown unit {other:?}"),
            };
            return Err(err(format!("{hint}; valid units are h, m, s, ms, us, ns")));
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let too_large = || {
            err(format!(
                "it is longer than the maximum of {}",
                format_duration(MAX_DURATION)
            ))
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        let mut nanos = whole.checked_mul(nanos_per_unit).ok_or_else(too_large)?;
        // Fractions are kept to nanosecond precision, as Go does.
        let mut scale = nanos_per_unit;
        for digit in fraction.chars().take(18) {
            scale /= 10;
            nanos += u128::from(digit.to_digit(10).unwrap_or(0)) * scale;
        }
        total = total.checked_add(nanos).ok_or_else(too_large)?;
        if total > MAX_DURATION.as_nanos() {
            return Err(too_large());
        }
    }
    if total == 0 {
        return Err(err("it must be longer than zero".into()));
    }
    let secs = (total / 1_000_000_000) as u64;
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Formats a duration compactly, the way a person would write it back: `24h`, `1h30m`, `90s`,
/// `1.5s`. The output parses back to the same duration (to the millisecond).
pub fn format_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    let millis = d.subsec_millis();
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if s > 0 || millis > 0 || out.is_empty() {
        if millis > 0 {
            let frac = format!("{millis:03}");
            out += &format!("{s}.{}s", frac.trim_end_matches('0'));
        } else {
            out += &format!("{s}s");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_kubernetes_style_durations() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(parse_duration("24h").unwrap(), h(24));
        assert_eq!(parse_duration("8766h").unwrap(), h(8766));
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration(" 10s ").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("87660h").unwrap(), MAX_DURATION);
    }

    #[test]
    fn rejects_bad_durations_with_a_reason() {
        for (input, needle) in [
            ("abc", "expected a number"),
            ("", "empty"),
            ("0s", "longer than zero"),
            ("0h0m", "longer than zero"),
            ("-5m", "positive"),
            ("10", "unit is missing"),
            ("7d", "168h"),
            ("5y", "unknown unit"),
            ("87661h", "maximum"),
            ("99999999999999999999999999999999999999999h", "maximum"),
            ("1..5h", "expected a number"),
        ] {
            let err = parse_duration(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
            assert!(err.contains(&format!("{input:?}")), "{err} names the input");
        }
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format_duration(Duration::from_secs(24 * 3600)), "24h");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    proptest! {
        #[test]
        fn format_round_trips(ms in 1u64..MAX_DURATION.as_millis() as u64) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
