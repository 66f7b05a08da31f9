//! What the adapters ask of DynamoDB and SQS. Requests are counted as sent; request units are
//! worked out from item sizes with DynamoDB's rounding (a strongly consistent read costs one
//! unit per 4 KB, a write one per 1 KB, a refused conditional write as much as a done one), so
//! the figures price an event on an on-demand table without asking AWS.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by the adapters of one handler.
#[derive(Debug, Default)]
pub struct Usage {
    call_reads: AtomicU64,
    call_read_units: AtomicU64,
    call_writes: AtomicU64,
    call_write_units: AtomicU64,
    call_write_bytes: AtomicU64,
    conflicts: AtomicU64,
    breaker_reads: AtomicU64,
    breaker_writes: AtomicU64,
    connection_reads: AtomicU64,
    queue_sends: AtomicU64,
}

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageCounts {
    /// Strongly consistent `GetItem`s on the calls table.
    pub call_reads: u64,
    /// The read request units they cost.
    pub call_read_units: u64,
    /// Conditional `PutItem`s on the calls table, taken or refused.
    pub call_writes: u64,
    /// The write request units they cost.
    pub call_write_units: u64,
    /// The size of the items they wrote, added up, as DynamoDB bills it.
    pub call_write_bytes: u64,
    /// Writes refused because another worker had changed the item (a call or a breaker)
    /// since it was read.
    pub conflicts: u64,
    /// Strongly consistent `GetItem`s of the CRM destinations' breaker items, also on the
    /// calls table (one unit each: the item is under 100 bytes), apart from the calls' so
    /// that a call's own reads stay countable (a warm worker reads a breaker once a second).
    pub breaker_reads: u64,
    /// Conditional `PutItem`s of breaker items, taken or refused (one unit each); none while
    /// the CRM answers, as a breaker is written only when it changes.
    pub breaker_writes: u64,
    /// `GetItem`s on the connections table (a warm container caches connections).
    pub connection_reads: u64,
    /// `SendMessage`s on the queue.
    pub queue_sends: u64,
}

impl UsageCounts {
    /// What was used since `before`.
    pub fn since(self, before: UsageCounts) -> UsageCounts {
        UsageCounts {
            call_reads: self.call_reads - before.call_reads,
            call_read_units: self.call_read_units - before.call_read_units,
            call_writes: self.call_writes - before.call_writes,
            call_write_units: self.call_write_units - before.call_write_units,
            call_write_bytes: self.call_write_bytes - before.call_write_bytes,
            conflicts: self.conflicts - before.conflicts,
            breaker_reads: self.breaker_reads - before.breaker_reads,
            breaker_writes: self.breaker_writes - before.breaker_writes,
            connection_reads: self.connection_reads - before.connection_reads,
            queue_sends: self.queue_sends - before.queue_sends,
        }
    }
}

const READ_UNIT_BYTES: usize = 4096;
const WRITE_UNIT_BYTES: usize = 1024;

/// Request units for an item of `bytes`: at least one, even for an item that is not there.
fn units(bytes: usize, unit: usize) -> u64 {
    bytes.div_ceil(unit).max(1) as u64
}

impl Usage {
    pub fn counts(&self) -> UsageCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        UsageCounts {
            call_reads: get(&self.call_reads),
            call_read_units: get(&self.call_read_units),
            call_writes: get(&self.call_writes),
            call_write_units: get(&self.call_write_units),
            call_write_bytes: get(&self.call_write_bytes),
            conflicts: get(&self.conflicts),
            breaker_reads: get(&self.breaker_reads),
            breaker_writes: get(&self.breaker_writes),
            connection_reads: get(&self.connection_reads),
            queue_sends: get(&self.queue_sends),
        }
    }

    pub(crate) fn call_read(&self, item_bytes: usize) {
        self.call_reads.fetch_add(1, Ordering::Relaxed);
        self.call_read_units
            .fetch_add(units(item_bytes, READ_UNIT_BYTES), Ordering::Relaxed);
    }

    pub(crate) fn call_write(&self, item_bytes: usize) {
        self.call_writes.fetch_add(1, Ordering::Relaxed);
        self.call_write_units
            .fetch_add(units(item_bytes, WRITE_UNIT_BYTES), Ordering::Relaxed);
        self.call_write_bytes
            .fetch_add(item_bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn breaker_read(&self) {
        self.breaker_reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn breaker_write(&self) {
        self.breaker_writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_read(&self) {
        self.connection_reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn queue_send(&self) {
        self.queue_sends.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_up_with_a_minimum_of_one() {
        let usage = Usage::default();
        usage.call_read(0);
        usage.call_read(4097);
        usage.call_write(1024);
        usage.call_write(1025);
        usage.breaker_read();
        let counts = usage.counts();
        assert_eq!((counts.call_reads, counts.call_read_units), (2, 3));
        assert_eq!((counts.call_writes, counts.call_write_units), (2, 3));
        assert_eq!(counts.call_write_bytes, 2049);
        assert_eq!((counts.breaker_reads, counts.breaker_writes), (1, 0));
        assert_eq!(counts.since(counts), UsageCounts::default());
    }
}
