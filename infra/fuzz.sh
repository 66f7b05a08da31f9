#!/usr/bin/env bash
# Long fuzz runs of the provider parsers and the ingest path (see RELIABILITY.md).
#
#   infra/fuzz.sh proptest [CASES]       the proptest suite (shared/tests/fuzz_ingest.rs),
#                                        CASES per test (default 200000); seed: CALLBRIDGE_FUZZ_SEED
#   infra/fuzz.sh cargo-fuzz [SECONDS]   every cargo-fuzz target of fuzz/ for SECONDS each
#                                        (default 300), seeded with the scenario webhooks
#   infra/fuzz.sh all [CASES] [SECONDS]  both
#   infra/fuzz.sh build                  build every target and replay the kept failing inputs
#                                        (CI, infra/test.sh): no cargo-fuzz needed, no run
#
# cargo-fuzz needs nightly flags: on a stable toolchain they are allowed with RUSTC_BOOTSTRAP=1
# (set here). The targets are built without a sanitizer (-s none: the code under test is safe
# Rust, and a panic or an overflow is what we look for) and with debug assertions (-a, so an
# arithmetic overflow is a crash). A crash leaves its input in fuzz/artifacts/<target>/ (the
# cargo-fuzz convention): commit it there, and `build` replays it on every CI run from then on.
# Replay one by hand with `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a <target> <file>`.
# Every run prints libFuzzer's seed; FUZZ_SEED=<seed> repeats a run's input sequence.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(parse_telsmart parse_teltel parse_voys parse_telecmi ingest)

# Builds the targets as `cargo fuzz build -s none -a` does (the same coverage flags, --cfg
# fuzzing, debug assertions, release), with cargo alone and offline once the dependencies are
# fetched, in fuzz/target (its flags would rebuild the workspace's target dir). Then runs each
# target on the inputs kept in fuzz/artifacts/<target>/, if any: a target given files runs
# them once and fails on a crash.
build() {
    local started=$SECONDS
    local triple
    triple=$(rustc -vV | sed -n 's/^host: //p')
    RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=fuzz/target RUSTFLAGS="--cfg fuzzing \
        -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
        -Cdebug-assertions" \
        cargo build --locked --release --manifest-path fuzz/Cargo.toml --target "$triple" --bins
    for target in "${TARGETS[@]}"; do
        local kept=(fuzz/artifacts/"$target"/*)
        if [ -e "${kept[0]}" ]; then
            echo "== ${target}: replaying ${#kept[@]} kept inputs"
            "fuzz/target/${triple}/release/${target}" "${kept[@]}"
        fi
    done
    echo "== fuzz targets built in $((SECONDS - started)) s"
}

proptest() {
    local cases="${1:-200000}"
    echo "== proptest: ${cases} cases per test"
    mkdir -p fuzz/logs
    local log=fuzz/logs/proptest.log
    local started=$SECONDS
    local status=0
    CALLBRIDGE_FUZZ_CASES="$cases" cargo test -p callbridge-shared --test fuzz_ingest -- \
        --nocapture --test-threads 2 >"$log" 2>&1 || status=$?
    grep -E '^fuzz |^test |test result' "$log" || true
    echo "== proptest: exit ${status} in $((SECONDS - started)) s (log: ${log})"
    if [ "$status" -ne 0 ]; then
        grep -A30 panicked "$log" | head -80
        exit "$status"
    fi
}

# One seed file per scenario webhook: for a parser, the JSON body; for ingest, a first byte that
# picks a well-formed request (provider in the low bits; 0x80: signed) before the body.
seed_corpus() {
    python3 - <<'EOF'
import json, pathlib
providers = ["telsmart", "teltel", "voys", "telecmi"]
for index, provider in enumerate(providers):
    for path in sorted(pathlib.Path("tests/scenarios", provider).glob("*.json")):
        if path.name.endswith(".expected.json"):
            continue
        for n, webhook in enumerate(json.loads(path.read_text())):
            body = json.dumps(webhook).encode()
            name = f"{path.stem}-{n}"
            for target, data in [
                (f"parse_{provider}", body),
                ("ingest", bytes([index]) + body),
                ("ingest", bytes([0x80 | index]) + body),
            ]:
                d = pathlib.Path("fuzz/corpus", target)
                d.mkdir(parents=True, exist_ok=True)
                (d / f"seed-{provider}-{name}-{data[0]}").write_bytes(data)
EOF
}

cargo_fuzz() {
    local seconds="${1:-300}"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
    export RUSTC_BOOTSTRAP=1
    seed_corpus
    cargo fuzz build -s none -a
    mkdir -p fuzz/logs
    for target in "${TARGETS[@]}"; do
        echo "== cargo fuzz: ${target} for ${seconds} s"
        local log="fuzz/logs/${target}.log"
        local status=0
        cargo fuzz run -s none -a "$target" -- \
            -max_total_time="$seconds" -max_len=65536 -timeout=10 ${FUZZ_SEED:+-seed="$FUZZ_SEED"} \
            -dict=fuzz/webhook.dict -print_final_stats=1 >"$log" 2>&1 || status=$?
        grep -m1 -E '^INFO: Seed: ' "$log" || true
        local runs
        runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
        local corpus
        corpus=$(find "fuzz/corpus/${target}" -type f | wc -l)
        echo "== ${target}: ${runs:-?} inputs in ${seconds} s, corpus ${corpus}, exit ${status}"
        if [ "$status" -ne 0 ]; then
            tail -40 "$log"
            echo "== ${target} FAILED: see ${log} and fuzz/artifacts/${target}/"
            exit "$status"
        fi
    done
}

case "${1:-all}" in
    build) build ;;
    proptest) proptest "${2:-}" ;;
    cargo-fuzz) cargo_fuzz "${2:-}" ;;
    all)
        proptest "${2:-}"
        cargo_fuzz "${3:-}"
        ;;
    *)
        echo "usage: $0 build | proptest [CASES] | cargo-fuzz [SECONDS] | all [CASES] [SECONDS]" >&2
        exit 2
        ;;
esac
