//! The pieces every service's configuration is made of, so that each setting of a kind reads
//! and fails the same way in every binary: durations (`30s`, `15m`, `24h`, `7d`), numbers,
//! NATS URLs, secrets that never print, and every problem collected before any is reported.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A secret value whose `Debug` never shows it, so configs and errors can be logged safely.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// Lets a secret be used as key bytes (an HMAC key, a JWT secret) without copying it out.
impl AsRef<[u8]> for Secret {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Every problem found in a service's settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// One line per problem, each naming its variable and what to do.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// Collects problems while the settings are read, so all are reported together.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<String>);

impl Problems {
    /// The value, or `None` with its problem kept.
    pub fn check<T>(&mut self, result: Result<T, String>) -> Option<T> {
        result.map_err(|p| self.0.push(p)).ok()
    }

    pub fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when no problem was found, else every problem.
    pub fn finish<T>(self, value: impl FnOnce() -> Option<T>) -> Result<T, ConfigError> {
        match value() {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(ConfigError { problems: self.0 }),
        }
    }
}

/// The message of a setting that is not valid: its name, its value, and what it should be.
pub fn invalid(var: &str, value: &str, expected: &str) -> String {
    format!("{var}={value:?} is not valid: set it to {expected}")
}

/// A duration with a unit (`500ms`, `30s`, `15m`, `24h`, `7d`, or several: `1h 30m`).
pub fn duration(var: &str, value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim()).map_err(|_| {
        invalid(
            var,
            value,
            "a duration with a unit (ms, s, m, h or d), e.g. 30s, 15m, 24h, 7d",
        )
    })
}

/// A duration of at least `min`.
pub fn duration_at_least(var: &str, value: &str, min: Duration) -> Result<Duration, String> {
    let d = duration(var, value)?;
    if d < min {
        return Err(invalid(
            var,
            value,
            &format!("{} or more", humantime::format_duration(min)),
        ));
    }
    Ok(d)
}

/// A number of type `T`, described by `expected` when it is not one.
pub fn number<T: FromStr>(var: &str, value: &str, expected: &str) -> Result<T, String> {
    value
        .trim()
        .parse::<T>()
        .map_err(|_| invalid(var, value, expected))
}

/// A NATS server URL (`nats://`, `tls://`, `ws://` or `wss://`).
pub fn nats_url(value: &str) -> Result<String, String> {
    let value = value.trim();
    let ok = ["nats://", "tls://", "ws://", "wss://"]
        .iter()
        .any(|scheme| value.len() > scheme.len() && value.starts_with(scheme));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(invalid(
            "NATS_URL",
            value,
            "a NATS URL, e.g. nats://127.0.0.1:4222",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_have_one_syntax() {
        assert_eq!(duration("X", "30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("X", " 15m "), Ok(Duration::from_secs(900)));
        assert_eq!(duration("X", "24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(duration("X", "7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(duration("X", "250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "30", "s", "-5s", "1 fortnight"] {
            let e = duration("X", bad).expect_err(bad);
            assert!(e.starts_with("X=") && e.contains("e.g. 30s"), "{e}");
        }
        assert!(duration_at_least("X", "0s", Duration::from_secs(1)).is_err());
        assert_eq!(
            duration_at_least("X", "2s", Duration::from_secs(1)),
            Ok(Duration::from_secs(2))
        );
    }

    #[test]
    fn problems_are_all_reported() {
        let mut p = Problems::default();
        let port = p.check(number::<u16>("PORT", "http", "a port number"));
        let n = p.check(number::<u64>("N", "12", "a number"));
        assert_eq!((port, n), (None, Some(12)));
        p.push("SECOND: wrong");
        let e = p.finish(|| Some(())).expect_err("two problems");
        assert_eq!(e.problems.len(), 2);
        assert!(
            e.to_string()
                .starts_with("invalid configuration (2 problems):")
        );
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(****)");
    }
}
