#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md, in one run; not part of the test suite. Each step prints its
# own figures; the whole run takes 30-60 minutes on 2 cores (most of it release builds).
#
#   infra/bench.sh [hot|coldstart|sizes|load|wrk|cost ...]   (default: all of them)
#
# Everything runs on this machine over loopback; every server it starts is stopped at the end.
# The machine is shared: run it twice and read the medians.
set -euo pipefail
cd "$(dirname "$0")/.."

steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(hot coldstart sizes load wrk cost)
functions=(ingest-telsmart ingest-teltel ingest-voys ingest-telecmi worker)
hello_manifest=benches/coldstart/hello/Cargo.toml
hello_target=target/coldstart-hello
out=target/bench
mkdir -p "$out"

step() { printf '\n== %s\n' "$*" >&2; }
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

native_builds() {
  # Native x86_64 release builds: the workspace's release profile, and the hello-world
  # yardstick with a copy of it (benches/coldstart/hello is a workspace of its own).
  cargo build --release $(printf -- '-p %s ' "${functions[@]}")
  cargo build --release --manifest-path "$hello_manifest" --target-dir "$hello_target"
}

run_hot() {
  step "hot paths (criterion): parse+validate per provider, ingest, fold, Morph event"
  cargo bench -p callbridge-shared --bench hot_paths | tee "$out/hot_paths.txt" \
    | grep -E '^(allocs|record bytes)|time:|^[a-z]+/[a-z_]+ *$'
}

run_coldstart() {
  step "cold start: time to the first GET /runtime/invocation/next, beside hello world"
  native_builds
  local binaries=(hello=$hello_target/release/coldstart-hello)
  for f in "${functions[@]}"; do binaries+=("$f=target/release/$f"); done
  python3 benches/coldstart/coldstart.py --runs 40 --json "$out/coldstart.json" "${binaries[@]}"

  step "cold start with one real invocation each (moto emulator): peak RSS after it"
  infra/setup.sh
  local port log resources
  port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  log=$out/moto.log
  .venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  pids+=($!)
  resources=$out/resources.json
  # The CRM of the template is the one the harness answers; resources.py needs one.
  .venv/bin/python infra/aws/resources.py --endpoint "http://127.0.0.1:$port" --param NamePrefix=bench \
    --param CrmUrl=http://127.0.0.1:9/events >"$resources"
  .venv/bin/python benches/coldstart/coldstart.py --runs 10 --endpoint "http://127.0.0.1:$port" \
    --resources "$resources" --json "$out/coldstart-invoke.json" "${binaries[@]}"
}

run_sizes() {
  step "binary sizes: arm64 (cargo lambda, as deployed) and native x86_64"
  infra/build-lambdas.sh
  export PATH="$PWD/.venv/bin:$PATH"
  CARGO_TARGET_DIR=$PWD/$hello_target cargo lambda build --release --arm64 --manifest-path "$hello_manifest"
  native_builds
  printf '| binary | arm64 (bytes) | x86_64 (bytes) |\n|---|---:|---:|\n'
  printf '| hello | %s | %s |\n' "$(stat -c %s "$hello_target"/lambda/coldstart-hello/bootstrap)" \
    "$(stat -c %s "$hello_target"/release/coldstart-hello)"
  for f in "${functions[@]}"; do
    printf '| %s | %s | %s |\n' "$f" "$(stat -c %s target/lambda/"$f"/bootstrap)" "$(stat -c %s target/release/"$f")"
  done
}

run_load() {
  step "local server: saturation (webhooks accepted per second), then 5,000 webhooks/s open loop"
  cargo bench -p callbridge --bench load -- --calls 4000 --concurrency 64 | tee "$out/load-saturation.txt"
  cargo bench -p callbridge --bench load -- --calls 10000 --rate 5000 --gap-ms 100 | tee "$out/load-5000.txt"
  step "local server, one CRM request per webhook (calls of three webhooks back to back): 5,000/s for 6 s, then flat out"
  local answered=tests/scenarios/telsmart/1-answered-incoming.json
  cargo bench -p callbridge --bench load -- --scenario "$answered" --calls 10000 --rate 5000 --gap-ms 0 \
    | tee "$out/load-crm-per-webhook-5000.txt"
  cargo bench -p callbridge --bench load -- --scenario "$answered" --calls 10000 --concurrency 64 \
    | tee "$out/load-crm-per-webhook-saturation.txt"
}

run_wrk() {
  step "local server under wrk: a new call's ringing webhook per request"
  command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; return 1; }
  cargo build --release -p callbridge
  local dir port crm_port
  dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  crm_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  target/release/callbridge crm-recorder --listen "127.0.0.1:$crm_port" >/dev/null &
  pids+=($!)
  cat >"$dir/callbridge.toml" <<EOF
listen = "127.0.0.1:$port"
data_file = "$dir/callbridge.db"
[crm]
url = "http://127.0.0.1:$crm_port/events"
[[connections]]
id = "load-telsmart"
provider = "telsmart"
token = "load-telsmart-token-0123456789"
account = "b11d749b-8eb7-4236-a068-3d94ba3860d6"
connector_id = "conn_load"
owner_id = "owner_load"
users = { "200" = "usr_john" }
EOF
  RUST_LOG=warn target/release/callbridge serve --config "$dir/callbridge.toml" >/dev/null &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  for connections in 16 64; do
    wrk -t2 -c"$connections" -d10s --latency -s benches/load/webhook.lua "http://127.0.0.1:$port" \
      | tee "$out/wrk-c$connections.txt"
  done
  rm -rf "$dir"
}

run_cost() {
  step "AWS calls per event on the emulator, priced per million webhooks"
  infra/setup.sh
  cargo test -p callbridge --features aws --test aws reads_and_writes_per_event_are_counted -- --nocapture \
    2>&1 | tee "$out/aws-usage.txt" | python3 benches/cost.py
}

for s in "${steps[@]}"; do
  "run_$s"
done
