//! When a delivery that did not go through is tried again, and when it stops being tried: the
//! retry schedule of issue 11, one for both hosts. Pure: the hosts give it the instants (their
//! [`crate::ports::Clock`]) and the jitter, and it answers.
//!
//! What retrying can fix is told apart where the CRM's answer is read
//! (`adapters::crm_http`: connection errors, timeouts, 5xx, 408, 409, 425 and 429 are retried;
//! other 4xx, and a REST create whose outcome is unknown, are parked at once); this schedule is
//! only asked about the former.

use crate::domain::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The retry schedule: exponential backoff from `initial`, doubling after each failed attempt
/// up to `cap`; each wait is a share of that full wait (the jitter, from half to all of it),
/// never sooner than the CRM's `Retry-After` (itself taken up to `cap`); tried while the next
/// try falls within `horizon` of the first failure, parked after.
///
/// The cap of 5 minutes: a CRM that recovers while the breaker stays closed (only some calls
/// failed) hears from every waiting call within 5 minutes, and 5 minutes are still long enough
/// that a call waiting out a 72-hour outage costs 12 to 24 requests an hour (and none while
/// the breaker is open: [`super::breaker`] holds them and probes every 30 s, so after an outage
/// that opened it the wait is bounded by the probe, not by this cap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySchedule {
    /// How long after its first failure a delivery is still tried.
    #[serde(with = "seconds")]
    pub horizon: Duration,
    /// The full wait after the first failure.
    #[serde(with = "seconds")]
    pub initial: Duration,
    /// The longest full wait.
    #[serde(with = "seconds")]
    pub cap: Duration,
}

impl Default for RetrySchedule {
    /// 72 hours (Stripe's 3 days; the Standard Webhooks guidance), 250 ms doubling (as the
    /// local schedule before issue 11), capped at 5 minutes.
    fn default() -> Self {
        Self {
            horizon: Duration::from_secs(72 * 3600),
            initial: Duration::from_millis(250),
            cap: Duration::from_secs(5 * 60),
        }
    }
}

/// The share of a full wait taken, from half to all of it, so that calls that failed together
/// do not all come back together. The hosts draw it (`rand::rng().random_range(0.5..=1.0)`);
/// a share outside takes the nearest bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter(f64);

impl Jitter {
    /// The whole wait: what the AWS host takes at the cap, where a held message's receives
    /// must stay under SQS's ceiling of 1,000 (see [`RetrySchedule::attempts_within_horizon`]).
    pub const NONE: Jitter = Jitter(1.0);
    /// The shortest wait.
    pub const HALF: Jitter = Jitter(0.5);

    pub fn share(share: f64) -> Self {
        Self(if share.is_nan() {
            1.0
        } else {
            share.clamp(0.5, 1.0)
        })
    }
}

/// What to do with a delivery after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextTry {
    /// Try again at this instant.
    At(Timestamp),
    /// The next try would fall past the horizon (`ended` is when it ended): park the
    /// delivery, where an operator can redrive it. It is never dropped.
    Park { ended: Timestamp },
}

impl RetrySchedule {
    /// The next try after `failed_attempts` failed attempts (1 after the first), the last of
    /// which failed at `now`; the first failed at `first_failure`.
    pub fn next_try(
        &self,
        first_failure: Timestamp,
        failed_attempts: u32,
        now: Timestamp,
        retry_after: Option<Duration>,
        jitter: Jitter,
    ) -> NextTry {
        let ended = first_failure.checked_add(self.horizon);
        match (
            now.checked_add(self.wait(failed_attempts, retry_after, jitter)),
            ended,
        ) {
            (Some(at), Some(ended)) if at <= ended => NextTry::At(at),
            (_, Some(ended)) => NextTry::Park { ended },
            // A horizon past the year 2099 (a mistaken configuration) ends where time does.
            (Some(at), None) => NextTry::At(at),
            (None, None) => NextTry::Park { ended: now },
        }
    }

    /// The wait after `failed_attempts` failed attempts: `jitter`'s share of the full wait,
    /// never shorter than `retry_after` taken up to the cap. The AWS worker waits so too for
    /// what is not the CRM's (the store unavailable), counting the message's receives.
    pub fn wait(
        &self,
        failed_attempts: u32,
        retry_after: Option<Duration>,
        jitter: Jitter,
    ) -> Duration {
        let wait = self.full_wait(failed_attempts).mul_f64(jitter.0);
        match retry_after {
            Some(asked) => wait.max(asked.min(self.cap)),
            None => wait,
        }
    }

    /// How many attempts a delivery gets when every one fails at once and every wait takes
    /// `jitter`: the receives an SQS message can need, for the template's `maxReceiveCount`.
    pub fn attempts_within_horizon(&self, jitter: Jitter) -> u32 {
        let mut elapsed = Duration::ZERO;
        let mut attempts = 1;
        loop {
            elapsed += self.full_wait(attempts).mul_f64(jitter.0);
            if elapsed > self.horizon {
                return attempts;
            }
            attempts += 1;
        }
    }

    /// The wait after `failed_attempts` failed attempts before the jitter takes its share.
    fn full_wait(&self, failed_attempts: u32) -> Duration {
        let doublings = failed_attempts.saturating_sub(1).min(63);
        self.initial
            .checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
            .unwrap_or(self.cap)
            .min(self.cap)
    }
}

/// Durations in configuration as whole seconds (`horizon = 259200`), the unit the template's
/// SQS attributes take too.
mod seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;

    fn at(micros: i64) -> Timestamp {
        Timestamp::from_micros(1_765_209_600_000_000 + micros).unwrap()
    }

    fn secs(s: f64) -> i64 {
        (s * 1e6) as i64
    }

    /// Every try of a delivery whose attempts all fail at once, as offsets from the first
    /// failure, with the park's instant.
    fn every_try(schedule: &RetrySchedule, jitter: Jitter) -> (Vec<i64>, Timestamp) {
        let first = at(0);
        let (mut now, mut failed, mut tries) = (first, 1, vec![0]);
        loop {
            match schedule.next_try(first, failed, now, None, jitter) {
                NextTry::At(next) => {
                    assert!(next > now, "a try goes forward");
                    tries.push(next.as_micros() - first.as_micros());
                    now = next;
                    failed += 1;
                }
                NextTry::Park { ended } => return (tries, ended),
            }
        }
    }

    /// The defaults with the whole wait (jitter share 1), worked out by hand:
    ///
    /// | failed attempts | full wait | next try, after the first failure |
    /// |---|---|---|
    /// | 1 | 0.25 s | 0.25 s |
    /// | 2 | 0.5 s | 0.75 s |
    /// | 3 | 1 s | 1.75 s |
    /// | 4 | 2 s | 3.75 s |
    /// | 5 | 4 s | 7.75 s |
    /// | 6 | 8 s | 15.75 s |
    /// | 7 | 16 s | 31.75 s |
    /// | 8 | 32 s | 63.75 s |
    /// | 9 | 64 s | 127.75 s |
    /// | 10 | 128 s | 255.75 s |
    /// | 11 | 256 s | 511.75 s (0.25 s × (2¹¹ − 1)) |
    /// | 11 + k (k ≥ 1) | 300 s (the cap; 512 s uncapped) | 511.75 s + 300 s × k |
    ///
    /// The horizon is 259,200 s: the last k with 511.75 + 300 k ≤ 259,200 is 862
    /// (258,688.25 / 300 = 862.29), the try at 259,111.75 s, attempt 12 + 862 = 874. After it fails the next would be at 259,411.75 s, past the horizon:
    /// parked, 71 h 58 min 31.75 s after the first failure.
    #[test]
    fn the_default_schedule_tries_874_times_in_72_hours_with_whole_waits() {
        let schedule = RetrySchedule::default();
        let (tries, ended) = every_try(&schedule, Jitter::NONE);
        let expected_first_12 = [
            0.0, 0.25, 0.75, 1.75, 3.75, 7.75, 15.75, 31.75, 63.75, 127.75, 255.75, 511.75,
        ];
        let first_12: Vec<i64> = expected_first_12.iter().map(|&s| secs(s)).collect();
        assert_eq!(tries[..12], first_12[..]);
        assert_eq!(tries[12], secs(811.75));
        assert_eq!(tries.len(), 874);
        assert_eq!(*tries.last().unwrap(), secs(259_111.75));
        assert!(
            tries
                .windows(2)
                .skip(11)
                .all(|w| w[1] - w[0] == secs(300.0))
        );
        assert_eq!(ended, at(72 * HOUR));
        assert_eq!(schedule.attempts_within_horizon(Jitter::NONE), 874);
    }

    /// With the shortest waits everything halves: 0.125 s × (2¹¹ − 1) = 255.875 s by the
    /// 12th attempt, then 150 s apart: (259,200 − 255.875) / 150 = 1,726.29, so 1,726 more,
    /// 1,738 attempts, the last at 255.875 + 258,900 = 259,155.875 s. Over SQS's ceiling of
    /// 1,000 receives: the AWS host waits whole at the cap.
    #[test]
    fn the_shortest_waits_try_1738_times() {
        let schedule = RetrySchedule::default();
        let (tries, _) = every_try(&schedule, Jitter::HALF);
        assert_eq!(tries[11], secs(255.875));
        assert_eq!(tries.len(), 1_738);
        assert_eq!(*tries.last().unwrap(), secs(259_155.875));
        assert_eq!(schedule.attempts_within_horizon(Jitter::HALF), 1_738);
    }

    #[test]
    fn the_72_hours_are_covered_and_the_last_try_is_within_a_cap_of_their_end() {
        let schedule = RetrySchedule::default();
        for share in [0.5, 0.61, 0.75, 0.9, 1.0] {
            let (tries, ended) = every_try(&schedule, Jitter::share(share));
            let last = *tries.last().unwrap();
            assert!(last <= 72 * HOUR, "share {share}: {last}");
            assert!(
                last > 72 * HOUR - secs(300.0),
                "share {share}: the last try {last} leaves more than a cap of the horizon"
            );
            assert_eq!(ended, at(72 * HOUR));
        }
    }

    #[test]
    fn the_horizons_edge_is_a_try_and_one_microsecond_later_a_park() {
        let schedule = RetrySchedule::default();
        let first = at(0);
        // After 20 failures the full wait is the cap, 300 s.
        let wait = secs(300.0);
        let edge = at(72 * HOUR - wait);
        assert_eq!(
            schedule.next_try(first, 20, edge, None, Jitter::NONE),
            NextTry::At(at(72 * HOUR))
        );
        let before = at(72 * HOUR - wait - 1);
        assert_eq!(
            schedule.next_try(first, 20, before, None, Jitter::NONE),
            NextTry::At(at(72 * HOUR - 1))
        );
        let past = at(72 * HOUR - wait + 1);
        assert_eq!(
            schedule.next_try(first, 20, past, None, Jitter::NONE),
            NextTry::Park {
                ended: at(72 * HOUR)
            }
        );
    }

    #[test]
    fn retry_after_is_a_floor_taken_up_to_the_cap() {
        let schedule = RetrySchedule::default();
        let first = at(0);
        // After 1 failure the wait is 0.25 s; a CRM asking for 30 s gets 30 s.
        let asked = Some(Duration::from_secs(30));
        assert_eq!(
            schedule.next_try(first, 1, first, asked, Jitter::NONE),
            NextTry::At(at(secs(30.0)))
        );
        // A shorter Retry-After than the backoff does not shorten it: 10 failures wait 128 s.
        let short = Some(Duration::from_secs(1));
        assert_eq!(
            schedule.next_try(first, 10, first, short, Jitter::HALF),
            NextTry::At(at(secs(64.0)))
        );
        // A day asked for is taken as the cap, 300 s.
        let day = Some(Duration::from_secs(86_400));
        assert_eq!(
            schedule.next_try(first, 1, first, day, Jitter::NONE),
            NextTry::At(at(secs(300.0)))
        );
    }

    #[test]
    fn jitter_takes_its_share_between_half_and_all() {
        let schedule = RetrySchedule::default();
        let first = at(0);
        // 4 failures: 2 s full.
        let try_at = |share| match schedule.next_try(first, 4, first, None, Jitter::share(share)) {
            NextTry::At(t) => t,
            park => panic!("{park:?}"),
        };
        assert_eq!(try_at(0.75), at(secs(1.5)));
        assert_eq!(try_at(0.1), at(secs(1.0)));
        assert_eq!(try_at(7.0), at(secs(2.0)));
        assert_eq!(try_at(f64::NAN), at(secs(2.0)));
    }

    #[test]
    fn a_shortened_horizon_parks_sooner() {
        let schedule = RetrySchedule {
            horizon: Duration::from_secs(10),
            initial: Duration::from_secs(1),
            cap: Duration::from_secs(4),
        };
        // Whole waits 1, 2, 4, 4: tries at 0, 1, 3, 7; the next (11 s) is past 10 s.
        let (tries, ended) = every_try(&schedule, Jitter::NONE);
        assert_eq!(tries, [0, secs(1.0), secs(3.0), secs(7.0)]);
        assert_eq!(ended, at(secs(10.0)));
    }

    #[test]
    fn huge_attempt_counts_wait_the_cap() {
        let schedule = RetrySchedule::default();
        let first = at(0);
        assert_eq!(
            schedule.next_try(first, u32::MAX, first, None, Jitter::NONE),
            NextTry::At(at(secs(300.0)))
        );
    }

    #[test]
    fn reads_from_configuration_in_seconds_with_defaults() {
        let read: RetrySchedule = serde_json::from_str(r#"{ "horizon": 600 }"#).unwrap();
        assert_eq!(
            read,
            RetrySchedule {
                horizon: Duration::from_secs(600),
                ..RetrySchedule::default()
            }
        );
        assert!(serde_json::from_str::<RetrySchedule>(r#"{ "horizon": -1 }"#).is_err());
        assert!(serde_json::from_str::<RetrySchedule>(r#"{ "horizn": 1 }"#).is_err());
    }
}
