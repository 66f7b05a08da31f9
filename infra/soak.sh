#!/usr/bin/env bash
# The long runs of RELIABILITY.md, not part of the test suite: thousands of concurrent calls
# through a real `callbridge serve` to a CRM that fails one request in seven (503, 429, 429 with
# Retry-After, 500, connection closed, answer after the timeout), then the CRM fault tests again
# and again. Loopback only; each run is bounded by its call count and the tests' timeouts.
#
#   infra/soak.sh [CALLS] [ROUNDS]   (default: 5000 calls, 5 rounds of the fault tests)
#
# Prints each run's counts: webhooks sent and accepted, CRM requests and failures, repeats
# after a late answer, events applied, calls lost, revisions doubled.
set -euo pipefail
cd "$(dirname "$0")/.."

calls=${1:-5000}
rounds=${2:-5}

printf '\n== load: %s calls, flaky CRM\n' "$calls" >&2
CALLBRIDGE_LOAD_CALLS=$calls cargo test -p callbridge --test local_load -- --nocapture 2>&1 \
  | grep -E '^load:|test result'

for round in $(seq 1 "$rounds"); do
  printf '\n== CRM faults, round %s of %s\n' "$round" "$rounds" >&2
  cargo test -p callbridge --test local_faults --test local_crm_faults -- --nocapture 2>&1 \
    | grep -E '^(transient|timeouts|refusals)|test result'
done
