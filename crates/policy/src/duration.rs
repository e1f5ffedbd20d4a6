//! Duration strings: the one parser for Istio duration fields and `ward` command-line flags.
//!
//! The grammar is Go's `time.ParseDuration` without a sign: one or more `<number><unit>`
//! pairs, the number a decimal with an optional fraction (`1.5h`, `1m30s`, `300ms`), units
//! `h`, `m`, `s`, `ms`, `us`/`µs`, `ns`. Istio's duration fields take these in YAML
//! (istio.io DestinationRule examples write `interval: 5m`, `baseEjectionTime: 15m`), a
//! superset of the protobuf JSON form `1.5s`
//! (<https://protobuf.dev/reference/protobuf/google.protobuf/#duration>).
//! [`Grammar::FLAGS`] adds `d` (days) and a bare number meaning seconds, for operator flags.
//! Arithmetic is exact (integer nanoseconds, no floating point) and overflow is an error.

use std::time::Duration;

/// Which extensions to Go's grammar a field accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grammar {
    /// `d` is a unit of 24 hours.
    pub days: bool,
    /// A number alone (`90`) is seconds.
    pub bare_seconds: bool,
}

impl Grammar {
    /// Istio's duration fields (for example `RequestAuthentication` `jwtRules[].timeout`).
    pub const ISTIO: Grammar = Grammar {
        days: false,
        bare_seconds: false,
    };
    /// `ward` command-line flags: Istio's grammar, plus `d` and bare seconds.
    pub const FLAGS: Grammar = Grammar {
        days: true,
        bare_seconds: true,
    };

    fn units(self) -> &'static str {
        if self.days {
            "d, h, m, s, ms, us, ns"
        } else {
            "h, m, s, ms, us, ns"
        }
    }
}

/// A string that is not a duration in the given [`Grammar`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a duration: expected a number and a unit such as 500ms, 5s, 1m30s or 1.5h (units: {units})")]
pub struct DurationError {
    text: String,
    units: &'static str,
}

/// Parses `text` in `grammar`. Zero (`0s`) is a duration; callers that need a positive one
/// check [`Duration::is_zero`].
pub fn parse(text: &str, grammar: Grammar) -> Result<Duration, DurationError> {
    let error = || DurationError {
        text: text.to_owned(),
        units: grammar.units(),
    };
    if text.is_empty() {
        return Err(error());
    }
    if grammar.bare_seconds && text.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = text.parse().map_err(|_| error())?;
        return Ok(Duration::from_secs(seconds));
    }
    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let whole_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (whole, after) = rest.split_at(whole_len);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => {
                let len = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                after.split_at(len)
            }
            None => ("", after),
        };
        // Go accepts `1.` and `.5` but not `.` alone.
        if whole.is_empty() && fraction.is_empty() {
            return Err(error());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "d" if grammar.days => 86_400_000_000_000,
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => return Err(error()),
        };
        total = total
            .checked_add(scaled(whole, fraction, unit_nanos).ok_or_else(error)?)
            .ok_or_else(error)?;
        rest = next;
    }
    let seconds = u64::try_from(total / 1_000_000_000).map_err(|_| error())?;
    // The remainder of a division by 10^9 is below 10^9, so it fits in u32.
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| error())?;
    Ok(Duration::new(seconds, nanos))
}

/// `whole.fraction` times `unit_nanos`, in nanoseconds, truncating below one nanosecond.
fn scaled(whole: &str, fraction: &str, unit_nanos: u128) -> Option<u128> {
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(unit_nanos)?;
    // Digits past the 20th cannot add a nanosecond even to a day (10^-20 d < 1 ns): dropped.
    let mut scale = unit_nanos;
    let mut part: u128 = 0;
    let mut denominator: u128 = 1;
    for digit in fraction.bytes().take(20) {
        part = part * 10 + u128::from(digit - b'0');
        denominator *= 10;
    }
    if denominator > 1 {
        scale = scale.checked_mul(part)? / denominator;
        nanos = nanos.checked_add(scale)?;
    }
    Some(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn both_grammars_accept_go_durations() {
        let cases = [
            ("5s", S(5)),
            ("0s", S(0)),
            ("10ms", MS(10)),
            ("500ms", MS(500)),
            ("1.5s", MS(1500)),
            ("0.1s", MS(100)),
            (".5s", MS(500)),
            ("1.s", S(1)),
            ("1m30s", S(90)),
            ("90s", S(90)),
            ("1h", S(3600)),
            ("24h", S(86_400)),
            ("1.5h", S(5400)),
            ("2h45m", S(9900)),
            ("3us", Duration::from_micros(3)),
            ("3µs", Duration::from_micros(3)),
            ("7ns", Duration::from_nanos(7)),
            ("1.0000000001s", S(1)),
        ];
        for (text, want) in cases {
            for grammar in [Grammar::ISTIO, Grammar::FLAGS] {
                assert_eq!(parse(text, grammar), Ok(want), "{text:?} {grammar:?}");
            }
        }
    }

    #[test]
    fn flags_add_days_and_bare_seconds() {
        assert_eq!(parse("2d", Grammar::FLAGS), Ok(S(2 * 86_400)));
        assert_eq!(parse("1d12h", Grammar::FLAGS), Ok(S(36 * 3600)));
        assert_eq!(parse("90", Grammar::FLAGS), Ok(S(90)));
        assert!(parse("2d", Grammar::ISTIO).is_err());
        assert!(parse("90", Grammar::ISTIO).is_err());
    }

    #[test]
    fn rejects() {
        for text in [
            "",
            "5",
            "s",
            "h",
            ".s",
            "-1s",
            "+1s",
            "1d",
            "5y",
            "1 s",
            " 1s",
            "1s ",
            "1.5.5s",
            "1S",
            "ms",
            "1sm",
            "18446744073709551616s",
            "999999999999999999999h",
        ] {
            assert!(parse(text, Grammar::ISTIO).is_err(), "{text:?}");
        }
        for text in ["", "h", "5y", "-1s", "1.5", "99999999999999999999"] {
            assert!(parse(text, Grammar::FLAGS).is_err(), "{text:?}");
        }
    }

    #[test]
    fn error_names_the_text_and_the_units() {
        let e = parse("5y", Grammar::FLAGS).unwrap_err().to_string();
        assert!(e.contains("\"5y\"") && e.contains("d, h, m"), "{e}");
    }
}
