//! A rate limit per CRM destination (issue 11), so that the catch-up after an outage stays
//! under what the CRM accepts: the generic cell rate algorithm (GCRA), whose whole state is one
//! instant. Pure, on injected instants; `governor` implements the same algorithm but keeps its
//! state in atomics behind its own clock trait, which a state shared through a store (or
//! written to a test table) does not fit, and the algorithm is a few lines.
//!
//! Only calls catching up after an outage are paced ([`super::destination::Destinations::admit`]):
//! live calls never queue behind them. `Retry-After` is not this module's: the schedule
//! ([`super::schedule`]) honours it per delivery.

use crate::domain::time::Timestamp;
use serde::{Deserialize, Serialize};

/// How fast a destination may be sent requests.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second, sustained.
    pub per_second: f64,
    /// Requests that may go at once after a quiet spell.
    pub burst: u32,
}

impl Default for RateLimit {
    /// 10 a second, 20 at once: the order of the limits CRM APIs publish (HubSpot's 100 per
    /// 10 s, for one), well above a live connection's pace (a call makes a few revisions over
    /// minutes), and a catch-up of 300 calls (a `created` and the latest state each) done
    /// within a minute of the recovery.
    fn default() -> Self {
        Self {
            per_second: 10.0,
            burst: 20,
        }
    }
}

impl RateLimit {
    /// The spacing of sustained requests.
    fn interval(&self) -> i64 {
        (1e6 / self.per_second.max(1e-3)).round() as i64
    }

    /// How far ahead of the sustained pace a burst may run.
    fn tolerance(&self) -> i64 {
        self.interval() * i64::from(self.burst.max(1) - 1)
    }
}

/// A destination's limiter: the theoretical arrival time of its next request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limiter {
    next_at: Option<Timestamp>,
}

/// May a request go now?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    Go,
    /// Not before `until`.
    Wait {
        until: Timestamp,
    },
}

impl Limiter {
    /// Whether one request may go at `now`; if it may, it is counted.
    pub fn take(&mut self, limit: &RateLimit, now: Timestamp) -> Pace {
        let now_us = now.as_micros();
        let next = self.next_at.map_or(now_us, |t| t.as_micros().max(now_us));
        let earliest = next - limit.tolerance();
        if earliest > now_us {
            return Pace::Wait {
                until: Timestamp::from_micros(earliest).unwrap_or(now),
            };
        }
        self.next_at = Timestamp::from_micros(next + limit.interval()).ok();
        Pace::Go
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000;

    fn at(micros: i64) -> Timestamp {
        Timestamp::from_micros(1_765_209_600_000_000 + micros).unwrap()
    }

    #[test]
    fn a_burst_goes_at_once_then_one_every_interval() {
        let limit = RateLimit::default();
        let mut limiter = Limiter::default();
        let now = at(0);
        for i in 0..20 {
            assert_eq!(limiter.take(&limit, now), Pace::Go, "request {i}");
        }
        // The 21st: the burst is spent; the bucket frees one every 100 ms.
        assert_eq!(
            limiter.take(&limit, now),
            Pace::Wait {
                until: at(100 * MS)
            }
        );
        assert_eq!(
            limiter.take(&limit, at(100 * MS - 1)),
            Pace::Wait {
                until: at(100 * MS)
            }
        );
        assert_eq!(limiter.take(&limit, at(100 * MS)), Pace::Go);
        assert_eq!(
            limiter.take(&limit, at(100 * MS)),
            Pace::Wait {
                until: at(200 * MS)
            }
        );
    }

    #[test]
    fn a_catch_up_is_held_to_the_rate() {
        let limit = RateLimit::default();
        let mut limiter = Limiter::default();
        // 600 waiting requests, each sent as soon as it may: 20 at once, then 10 a second,
        // so the 600th goes at (600 - 20) × 100 ms = 58 s.
        let mut now = at(0);
        let mut sent = 0;
        while sent < 600 {
            match limiter.take(&limit, now) {
                Pace::Go => sent += 1,
                Pace::Wait { until } => {
                    assert!(until > now);
                    now = until;
                }
            }
        }
        assert_eq!(now, at(58_000 * MS));
    }

    #[test]
    fn a_quiet_spell_refills_the_burst_and_no_more() {
        let limit = RateLimit {
            per_second: 2.0,
            burst: 3,
        };
        let mut limiter = Limiter::default();
        for _ in 0..3 {
            assert_eq!(limiter.take(&limit, at(0)), Pace::Go);
        }
        // An hour later: 3 again, not 7,200.
        let later = at(3_600_000 * MS);
        for _ in 0..3 {
            assert_eq!(limiter.take(&limit, later), Pace::Go);
        }
        assert_eq!(
            limiter.take(&limit, later),
            Pace::Wait {
                until: at(3_600_500 * MS)
            }
        );
    }

    #[test]
    fn a_burst_of_one_spaces_every_request() {
        let limit = RateLimit {
            per_second: 4.0,
            burst: 1,
        };
        let mut limiter = Limiter::default();
        assert_eq!(limiter.take(&limit, at(0)), Pace::Go);
        assert_eq!(
            limiter.take(&limit, at(0)),
            Pace::Wait {
                until: at(250 * MS)
            }
        );
    }

    #[test]
    fn reads_from_configuration() {
        let read: RateLimit = serde_json::from_str(r#"{ "per_second": 2.5 }"#).unwrap();
        assert_eq!(read.per_second, 2.5);
        assert_eq!(read.burst, 20);
        assert!(serde_json::from_str::<RateLimit>(r#"{ "rps": 2 }"#).is_err());
    }
}
