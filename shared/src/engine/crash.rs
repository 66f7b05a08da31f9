//! Crash points, for the tests of what a crash at the worst moment leaves behind: built only
//! with the `fault-injection` feature (the tests' `--all-features` build, never the Lambda or
//! release builds), a point named in `CALLBRIDGE_CRASH_AT` aborts the process there, as a
//! `kill -9` or a Lambda container dying would. Without the feature a point is nothing.

/// The variable naming the point to crash at.
pub const CRASH_AT: &str = "CALLBRIDGE_CRASH_AT";

/// The moments between two writes where a crash hurts most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The CRM took a revision (2xx) and its delivery is not written yet.
    DeliveredNotMarked,
    /// A Voys merge discarded the merged call and the survivor has not taken its events yet.
    MergeHalfWritten,
    /// An erasure is written (the call erased, its deletion in the outbox) and nothing of it
    /// has reached the CRM yet.
    ErasureHalfDone,
}

impl CrashPoint {
    /// Its name in `CALLBRIDGE_CRASH_AT`.
    pub fn as_str(self) -> &'static str {
        match self {
            CrashPoint::DeliveredNotMarked => "delivered-not-marked",
            CrashPoint::MergeHalfWritten => "merge-half-written",
            CrashPoint::ErasureHalfDone => "erasure-half-done",
        }
    }
}

/// Aborts the process if `CALLBRIDGE_CRASH_AT` names `point`.
#[cfg(feature = "fault-injection")]
pub fn crash_point(point: CrashPoint) {
    if std::env::var(CRASH_AT).is_ok_and(|at| at == point.as_str()) {
        eprintln!(
            "callbridge: crash point `{}` reached: aborting",
            point.as_str()
        );
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn crash_point(_point: CrashPoint) {}
