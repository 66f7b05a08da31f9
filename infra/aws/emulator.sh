#!/usr/bin/env bash
# The AWS side on this machine: starts the emulator (moto) on a free loopback port, creates the
# queues and tables of template.yaml in it (infra/aws/resources.py), prints the environment
# that points the AWS SDK and callbridge at it, and runs until Ctrl-C.
#
#   infra/aws/emulator.sh [--param NAME=VALUE ...]
#
# then, in another terminal, with the printed variables exported:
#
#   cargo run -p callbridge --features aws -- connections import infra/callbridge.example.toml
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=.venv/bin
if [[ ! -x $venv/moto_server ]]; then
  echo "emulator: $venv/moto_server is missing: run infra/setup.sh" >&2
  exit 1
fi
port=$("$venv/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=${TMPDIR:-/tmp}/callbridge-moto-$port.log
"$venv/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
moto=$!
trap 'kill "$moto" 2>/dev/null' EXIT

endpoint=http://127.0.0.1:$port
resources=$("$venv/python" infra/aws/resources.py --endpoint "$endpoint" --param CrmUrl=http://127.0.0.1:4010/events "$@")
"$venv/python" - "$resources" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
worker = r["functions"]["WorkerFunction"]["environment"]
print(f"""# The emulator runs at {r['endpoint']}; point the AWS SDK and callbridge at it:
export AWS_ENDPOINT_URL={r['endpoint']}
export AWS_REGION={r['region']}
export AWS_ACCESS_KEY_ID=emulator AWS_SECRET_ACCESS_KEY=emulator
export CONNECTIONS_TABLE={worker['CONNECTIONS_TABLE']}
export CALLS_TABLE={worker['CALLS_TABLE']}
export QUEUE_URL={r['queues']['WebhookQueue']['url']}
export DEAD_LETTER_QUEUE_URL={r['queues']['DeadLetterQueue']['url']}""")
PY
echo "# moto logs to $log; Ctrl-C stops it" >&2
wait "$moto"
