#!/usr/bin/env bash
# Builds the five Lambda binaries for arm64 (Graviton) with cargo-lambda and the Zig linker,
# as `sam build` does. Output: target/lambda/<function>/bootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
infra/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
rustup target add aarch64-unknown-linux-gnu >/dev/null
start=$(date +%s)
cargo lambda build --release --arm64 \
  -p ingest-telsmart -p ingest-teltel -p ingest-voys -p ingest-telecmi -p worker
echo "lambda build: $(( $(date +%s) - start )) s" >&2
ls -l target/lambda/*/bootstrap >&2
