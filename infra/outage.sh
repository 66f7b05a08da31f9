#!/usr/bin/env bash
# Issue 11's real-time outage, not part of the test suite (about 6 minutes): a real
# `callbridge serve` with its default retry schedule and breaker (5 failures open it, one probe
# every 30 s, 72 h horizon), the CRM recorder answering 503 for 5 min 30 s while the calls of two
# connections come in, then recovering. Fails on anything parked, lost, doubled or out of order,
# or on more requests to the dead CRM than the breaker allows; prints the figures of
# RELIABILITY.md (requests while down, catch-up time and requests after the recovery).
#
#   infra/outage.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The features infra/test.sh builds with, so that its build serves here too.
cargo test -p callbridge --all-features --test local_outage -- --ignored --nocapture 2>&1 \
  | grep -E 'outage of|panicked|test result'
