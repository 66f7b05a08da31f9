//! Instants as the providers send them and as Morph wants them.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// An instant in UTC, in microseconds since the Unix epoch (the finest unit any provider sends).
/// Deserialising checks the range too, so a corrupted queue message or record cannot smuggle
/// in an instant the formatting code cannot handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "i64", try_from = "i64")]
pub struct Timestamp(i64);

impl From<Timestamp> for i64 {
    fn from(t: Timestamp) -> i64 {
        t.0
    }
}

impl TryFrom<i64> for Timestamp {
    type Error = String;
    fn try_from(micros: i64) -> Result<Self, String> {
        Timestamp::from_micros(micros)
    }
}

/// Instants before this (2000-01-01) or after [`LATEST`] (2100-01-01) are refused as invalid:
/// no call happens then, and a value out there is a unit or parsing mistake.
const EARLIEST: i64 = 946_684_800_000_000;
const LATEST: i64 = 4_102_444_800_000_000;

impl Timestamp {
    pub fn from_micros(micros: i64) -> Result<Self, String> {
        if (EARLIEST..LATEST).contains(&micros) {
            Ok(Self(micros))
        } else {
            Err("is outside the years 2000 to 2099".into())
        }
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// An epoch number whose unit is told by its size: seconds, milliseconds or microseconds.
    /// Every plausible call time in one unit is far from every plausible one in the others.
    pub fn from_epoch_any_unit(value: i64) -> Result<Self, String> {
        let micros = match value.unsigned_abs() {
            0..100_000_000_000 => value.checked_mul(1_000_000),
            100_000_000_000..100_000_000_000_000 => value.checked_mul(1_000),
            _ => Some(value),
        };
        micros
            .ok_or_else(|| "is out of range".to_string())
            .and_then(Self::from_micros)
    }

    /// An RFC 3339 / ISO 8601 date-time with an offset (`2023-09-01T13:41:25.972110+00:00`).
    pub fn parse_rfc3339(text: &str) -> Result<Self, String> {
        let parsed = DateTime::parse_from_rfc3339(text.trim())
            .map_err(|e| format!("is not an RFC 3339 date-time ({e})"))?;
        Self::from_micros(parsed.timestamp_micros())
    }

    /// UTC RFC 3339 with milliseconds, truncated rather than rounded: `2025-12-08T15:56:06.386Z`.
    pub fn to_rfc3339_millis(self) -> String {
        let truncated = self.0 - self.0.rem_euclid(1_000);
        DateTime::<Utc>::from_timestamp_micros(truncated)
            .expect("a Timestamp is always in chrono's range")
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// `self` plus `wait`; `None` past the instants a timestamp holds (the year 2100).
    pub fn checked_add(self, wait: Duration) -> Option<Self> {
        let micros = i64::try_from(wait.as_micros()).ok()?;
        Self::from_micros(self.0.checked_add(micros)?).ok()
    }

    /// `self` plus `wait`, or `self` itself past the instants a timestamp holds: a wait that
    /// long (a mistaken configuration) ends where time does.
    pub fn saturating_add(self, wait: Duration) -> Self {
        self.checked_add(wait).unwrap_or(self)
    }

    /// The time from `self` to `later`; none when `later` is not later.
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_micros(u64::try_from(later.0 - self.0).unwrap_or(0))
    }

    /// Whole seconds from `self` to `later`, rounded down; 0 when `later` is not later.
    pub fn whole_seconds_until(self, later: Timestamp) -> u64 {
        u64::try_from((later.0 - self.0).max(0) / 1_000_000).unwrap_or(0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_truncated_milliseconds() {
        let t = Timestamp::from_micros(1_765_209_366_386_977).unwrap();
        assert_eq!(t.to_rfc3339_millis(), "2025-12-08T15:56:06.386Z");
    }

    #[test]
    fn epoch_unit_is_told_by_size() {
        let secs = Timestamp::from_epoch_any_unit(1_650_635_340).unwrap();
        let millis = Timestamp::from_epoch_any_unit(1_650_635_340_436).unwrap();
        let micros = Timestamp::from_epoch_any_unit(1_650_635_340_436_123).unwrap();
        assert_eq!(secs.as_micros(), 1_650_635_340_000_000);
        assert_eq!(millis.as_micros(), 1_650_635_340_436_000);
        assert_eq!(micros.as_micros(), 1_650_635_340_436_123);
    }

    #[test]
    fn far_past_and_future_are_refused() {
        assert!(Timestamp::from_epoch_any_unit(0).is_err());
        assert!(Timestamp::from_epoch_any_unit(i64::MAX).is_err());
        assert!(Timestamp::from_epoch_any_unit(i64::MIN).is_err());
        assert!(Timestamp::parse_rfc3339("2150-01-01T00:00:00Z").is_err());
    }

    #[test]
    fn deserialising_checks_the_range() {
        assert!(serde_json::from_str::<Timestamp>("1765209366386177").is_ok());
        assert!(serde_json::from_str::<Timestamp>("9223372036854775807").is_err());
        assert!(serde_json::from_str::<Timestamp>("-5").is_err());
    }

    #[test]
    fn parses_offsets_to_utc() {
        let t = Timestamp::parse_rfc3339("2023-09-01T15:41:25.972110+02:00").unwrap();
        assert_eq!(t.to_rfc3339_millis(), "2023-09-01T13:41:25.972Z");
    }

    #[test]
    fn whole_seconds_round_down() {
        let a = Timestamp::from_micros(1_765_209_375_906_227).unwrap();
        let b = Timestamp::from_micros(1_765_209_400_106_173).unwrap();
        assert_eq!(a.whole_seconds_until(b), 24);
        assert_eq!(b.whole_seconds_until(a), 0);
        assert_eq!(a.until(b), Duration::from_micros(24_199_946));
        assert_eq!(b.until(a), Duration::ZERO);
        assert_eq!(a.checked_add(a.until(b)), Some(b));
        let end = Timestamp::from_micros(LATEST - 1).unwrap();
        assert_eq!(end.checked_add(Duration::from_micros(1)), None);
        assert_eq!(end.saturating_add(Duration::from_secs(1)), end);
    }
}
