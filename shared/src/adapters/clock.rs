//! The system clock, behind [`crate::ports::Clock`].

use crate::domain::time::Timestamp;
use crate::ports::Clock;

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(chrono::Utc::now().timestamp_micros())
            .expect("the clock is set between 2000 and 2100")
    }
}
