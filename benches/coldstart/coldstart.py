#!/usr/bin/env python3
"""Cold start of the Lambda binaries against a local Lambda runtime API.

Each binary is started as Lambda starts a `provided.al2023` function (the AWS_LAMBDA_*
variables, dummy credentials and region, the function's own settings) with
AWS_LAMBDA_RUNTIME_API pointing at this script's server. The init time is from just before
the process is spawned to its first `GET /2018-06-01/runtime/invocation/next`; the memory is
the process's VmRSS and VmHWM (peak RSS) read from /proc at that moment. The binaries are run
in turns (hello, then each function, N rounds), so the noise of a shared machine falls on all of
them alike, and each is compared with the hello-world binary of the same run.

With --endpoint (an AWS emulator with the template's tables and queues: moto, see
infra/bench.sh), each function is also handed one real invocation after its init: the
ingest functions a webhook (API Gateway v2 event), the worker an SQS batch holding the message
the ingest just queued, which it applies in DynamoDB and delivers to a CRM answered by this
script. The peak RSS is then read at the next `GET .../next`, after the invocation.

    coldstart.py --runs 30 [--endpoint URL --resources FILE] NAME=BINARY ...

The first NAME is the yardstick (hello). A NAME may carry a label after `@` to compare builds
of one function in the same run (`worker@before=... worker@after=...`). Prints a Markdown
table and writes --json if asked.
Loopback only; every process it starts is killed before it exits.
"""

import argparse
import hashlib
import http.server
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = "/2018-06-01/runtime"
# How long one run may take before it is counted as failed.
RUN_TIMEOUT_S = 20.0


class Run:
    """What the runtime API saw of one process."""

    def __init__(self, events):
        self.pid = None
        self.pid_known = threading.Event()
        # Invocations to hand out, in order; once they are out, the next `next` ends the run.
        self.events = list(events)
        self.first_next = None  # perf_counter() of the first GET next
        self.init_cpu_ns = None  # on-CPU time of all its threads at the first GET next
        self.init_faults = None
        self.init_rss_kib = None
        self.init_hwm_kib = None
        self.peak_hwm_kib = None
        self.invoke_s = []  # seconds from an event handed out to its answer
        self.answers = []
        self.errors = []
        self.handed_out_at = None
        self.done = threading.Event()
        self.killed = threading.Event()


def cpu_ns(pid):
    """On-CPU time of a process's live threads (the first field of each thread's schedstat)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass
    except OSError:
        pass
    return total


def minor_faults(pid):
    """Minor page faults of a process so far (its pages first touched)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])
    except (OSError, IndexError, ValueError):
        return None


def proc_status(pid):
    """VmRSS and VmHWM of a process, in KiB."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values.get("VmRSS"), values.get("VmHWM")


class Api(http.server.ThreadingHTTPServer):
    daemon_threads = True
    run = None
    crm_requests = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"{}", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        run = self.server.run
        if self.path != f"{RUNTIME}/invocation/next" or run is None:
            return self.reply(404)
        now = time.perf_counter()
        run.pid_known.wait(5)
        rss, hwm = proc_status(run.pid)
        if run.first_next is None:
            run.first_next = now
            run.init_cpu_ns = cpu_ns(run.pid)
            run.init_faults = minor_faults(run.pid)
            run.init_rss_kib, run.init_hwm_kib = rss, hwm
        if not run.events:
            run.peak_hwm_kib = hwm
            run.done.set()
            # Held until the process is killed, as Lambda freezes an idle function.
            run.killed.wait(RUN_TIMEOUT_S)
            self.close_connection = True
            return
        event = run.events.pop(0)
        if callable(event):
            event = event()
        body = json.dumps(event).encode()
        request_id = str(uuid.uuid4())
        deadline_ms = int(time.time() * 1000) + 60_000
        run.handed_out_at = time.perf_counter()
        self.reply(
            200,
            body,
            [
                ("Lambda-Runtime-Aws-Request-Id", request_id),
                ("Lambda-Runtime-Deadline-Ms", str(deadline_ms)),
                ("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:eu-west-1:123456789012:function:bench"),
                ("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000;Sampled=0"),
            ],
        )

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        run = self.server.run
        if self.path.startswith(f"{RUNTIME}/invocation/") and run is not None:
            if run.handed_out_at is not None:
                run.invoke_s.append(time.perf_counter() - run.handed_out_at)
            if self.path.endswith("/response"):
                run.answers.append(body.decode(errors="replace"))
            else:
                run.errors.append(body.decode(errors="replace"))
            return self.reply(202)
        if self.path == f"{RUNTIME}/init/error" and run is not None:
            run.errors.append("init error: " + body.decode(errors="replace"))
            run.done.set()
            return self.reply(202)
        if self.path == "/events":
            # The CRM: Morph answers an event with 200 and the event.
            Api.crm_requests += 1
            return self.reply(200, body or b"{}")
        return self.reply(404)


def lambda_env(name, api, memory_mb, settings, endpoint):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "HOME": tempfile.gettempdir(),
        "LAMBDA_TASK_ROOT": "/var/task",
        "LAMBDA_RUNTIME_DIR": "/var/runtime",
        "_HANDLER": "bootstrap",
        "AWS_LAMBDA_RUNTIME_API": api,
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]0123456789abcdef",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_EXECUTION_ENV": "AWS_Lambda_provided.al2023",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_SESSION_TOKEN": "bench",
        "RUST_LOG": "info",
    }
    env.update(settings)
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


def scenario_webhook(provider):
    """The first webhook of the provider's first scenario."""
    files = sorted(
        p for p in (ROOT / "tests/scenarios" / provider).glob("*.json") if not p.name.endswith(".expected.json")
    )
    return json.loads(files[0].read_text())[0]


def connections():
    config = tomllib.loads((ROOT / "infra/callbridge.example.toml").read_text())
    return {c["provider"]: c for c in config["connections"]}


def http_event(provider, connection, webhook):
    """An API Gateway v2 (HTTP API) event, as the ingest route receives it."""
    path = f"/webhooks/{provider}/{connection['id']}"
    return {
        "version": "2.0",
        "routeKey": "POST /webhooks/" + provider + "/{connection_id}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "authorization": f"Bearer {connection['token']}",
            "content-type": "application/json",
            "host": "bench.execute-api.eu-west-1.amazonaws.com",
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "domainName": "bench.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "bench",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "coldstart",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "POST /webhooks/" + provider + "/{connection_id}",
            "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "pathParameters": {"connection_id": connection["id"]},
        "body": json.dumps(webhook),
        "isBase64Encoded": False,
    }


class Emulated:
    """The emulator's tables and queue (made by infra/aws/resources.py), with the example
    connections in the connections table."""

    def __init__(self, endpoint, resources_file):
        import boto3  # from the .venv of moto

        self.resources = json.loads(Path(resources_file).read_text())
        session = boto3.session.Session(
            aws_access_key_id="bench", aws_secret_access_key="bench", region_name=self.resources["region"]
        )
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        dynamodb = session.client("dynamodb", endpoint_url=endpoint)
        self.queue_url = self.resources["queues"]["WebhookQueue"]["url"]
        table = self.resources["functions"]["WorkerFunction"]["environment"]["CONNECTIONS_TABLE"]
        for provider, c in connections().items():
            stored = {
                "id": c["id"],
                "provider": provider,
                "token_hashes": [hashlib.sha256(t.encode()).hexdigest() for t in [c["token"], *c.get("tokens", [])]],
                "connector_id": c["connector_id"],
                "owner_id": c["owner_id"],
                "users": c.get("users", {}),
            }
            for optional in ("account", "recording_url_template"):
                if optional in c:
                    stored[optional] = c[optional]
            dynamodb.put_item(
                TableName=table, Item={"id": {"S": c["id"]}, "connection": {"S": json.dumps(stored)}}
            )

    def settings(self, logical_id):
        return self.resources["functions"][logical_id]["environment"]

    def sqs_event(self):
        """An SQS batch of the oldest queued message, as the event source mapping sends it."""
        got = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=1,
            AttributeNames=["All"],
            VisibilityTimeout=600,
            WaitTimeSeconds=1,
        ).get("Messages", [])
        if not got:
            raise RuntimeError("the ingest queued nothing for the worker")
        m = got[0]
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
        return {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": m.get("Attributes", {}),
                    "messageAttributes": {},
                    "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:bench.fifo",
                    "awsRegion": "eu-west-1",
                }
            ]
        }


def function_of(name):
    """(template logical id, provider or None) of a binary's name (its label left out)."""
    name = name.split("@", 1)[0]
    if name.startswith("ingest-"):
        provider = name.removeprefix("ingest-")
        return "Ingest" + provider.capitalize() + "Function", provider
    if name == "worker":
        return "WorkerFunction", None
    return None, None


def template_variables(logical_id):
    """The names of a function's environment variables in template.yaml (its own block; the
    Globals set none)."""
    lines = (ROOT / "template.yaml").read_text().splitlines()
    names, inside, in_variables = [], False, False
    for line in lines:
        if re.match(r"^  [A-Za-z0-9]+:\s*$", line):
            inside = line.strip() == f"{logical_id}:"
            in_variables = False
            continue
        if not inside:
            continue
        if line.strip() == "Variables:":
            in_variables, indent = True, len(line) - len(line.lstrip())
            continue
        if in_variables:
            m = re.match(r"^(\s+)([A-Z0-9_]+):", line)
            if m and len(m.group(1)) > indent:
                names.append(m.group(2))
            elif line.strip():
                in_variables = False
    return names


def settings_without_emulator(name, crm_url):
    """Dummy values for the function's variables, as the template names them: no AWS call is
    made before the first invocation, so any well-formed value does."""
    logical_id, _ = function_of(name)
    if logical_id is None:
        return {}
    settings = {}
    for variable in template_variables(logical_id):
        if variable == "CRM_URL":
            value = crm_url
        elif variable == "QUEUE_URL":
            value = "https://sqs.eu-west-1.amazonaws.com/123456789012/bench.fifo"
        elif variable.endswith("_TABLE"):
            value = "bench-" + variable.removesuffix("_TABLE").lower()
        elif variable.endswith("_MS"):
            value = "5000"
        elif variable.endswith("_DAYS"):
            value = "30"
        elif variable == "RUST_LOG":
            value = "info"
        elif variable.startswith("CRM_"):
            value = ""  # the REST API's settings: empty when unused, as the template defaults
        else:
            value = "bench"
        settings[variable] = value
    if not settings:
        raise RuntimeError(f"template.yaml gives {logical_id} no environment variables")
    return settings


def one_run(server, api, name, binary, memory_mb, settings, endpoint, events, extra_env):
    env = lambda_env(name, api, memory_mb, settings, endpoint)
    env.update(extra_env)
    log = tempfile.TemporaryFile()
    run = Run(events)
    server.run = run
    started = time.perf_counter()
    process = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    run.pid = process.pid
    run.pid_known.set()
    deadline = started + RUN_TIMEOUT_S
    while not run.done.wait(0.005):
        if process.poll() is not None or time.perf_counter() > deadline:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    run.killed.set()
    server.run = None
    log.seek(0)
    output = log.read().decode(errors="replace")
    if run.first_next is None or run.errors or not run.done.is_set():
        raise RuntimeError(f"{name}: the run failed: {run.errors}\n--- its output:\n{output[-3000:]}")
    for answer in run.answers:
        if name.startswith("ingest-") and '"statusCode":202' not in answer.replace(" ", ""):
            raise RuntimeError(f"{name}: the webhook was not accepted: {answer}\n{output[-3000:]}")
        if name.startswith("worker") and "batchItemFailures" in answer and '"itemIdentifier"' in answer:
            raise RuntimeError(f"{name}: the batch failed: {answer}\n{output[-3000:]}")
    return {
        "init_ms": (run.first_next - started) * 1000,
        "init_cpu_ms": run.init_cpu_ns / 1e6,
        "init_faults": run.init_faults,
        "init_rss_kib": run.init_rss_kib,
        "init_hwm_kib": run.init_hwm_kib,
        "peak_hwm_kib": run.peak_hwm_kib,
        "invoke_ms": [s * 1000 for s in run.invoke_s],
        # What the function wrote (its logs: CloudWatch bills them), init included.
        "output_bytes": len(output.encode()),
        "output": output[-6000:],
    }


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--endpoint", help="an AWS emulator with the template's resources")
    parser.add_argument("--resources", help="the JSON infra/aws/resources.py printed for --endpoint")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="an extra variable, for experiments")
    parser.add_argument("binaries", nargs="+", metavar="NAME=BINARY")
    args = parser.parse_args()
    binaries = [b.split("=", 1) for b in args.binaries]

    server = Api(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"127.0.0.1:{server.server_address[1]}"
    crm_url = f"http://{api}/events"
    emulated = Emulated(args.endpoint, args.resources) if args.endpoint else None
    conns = connections()

    results = {name: [] for name, _ in binaries}
    for round_ in range(args.runs):
        for name, binary in binaries:
            logical_id, provider = function_of(name)
            memory_mb = 256 if logical_id == "WorkerFunction" else 128
            events = []
            if emulated and logical_id:
                settings = dict(emulated.settings(logical_id))
                settings["RUST_LOG"] = "info"
                if logical_id == "WorkerFunction":
                    settings["CRM_URL"] = crm_url
                    events = [emulated.sqs_event]
                else:
                    webhook = scenario_webhook(provider)
                    if provider == "telsmart":
                        # A new call each round, for the worker that follows.
                        webhook["id"] = str(uuid.uuid4())
                    events = [http_event(provider, conns[provider], webhook)]
            else:
                settings = settings_without_emulator(name, crm_url)
                if emulated and logical_id is None:
                    events = [{"hello": "world"}]
            extra_env = dict(e.split("=", 1) for e in args.env)
            results[name].append(
                one_run(server, api, name, binary, memory_mb, settings, args.endpoint, events, extra_env)
            )
        print(f"round {round_ + 1}/{args.runs} done", file=sys.stderr)
    server.shutdown()

    yardstick = binaries[0][0]
    hello_median = statistics.median(r["init_ms"] for r in results[yardstick])
    hello_cpu = statistics.median(r["init_cpu_ms"] for r in results[yardstick])
    rows = []
    for name, binary in binaries:
        runs = results[name]
        init = [r["init_ms"] for r in runs]
        median = statistics.median(init)
        cpu = statistics.median(r["init_cpu_ms"] for r in runs)
        row = {
            "name": name,
            "size_bytes": os.path.getsize(binary),
            "runs": len(runs),
            "init_ms_median": median,
            "init_ms_p90": percentile(init, 90),
            "init_ms_min": min(init),
            "ratio_to_hello": median / hello_median,
            "init_cpu_ms_median": cpu,
            "init_faults_median": statistics.median(r["init_faults"] for r in runs),
            "cpu_ratio_to_hello": cpu / hello_cpu,
            "init_rss_mib": statistics.median(r["init_rss_kib"] for r in runs) / 1024,
            "peak_rss_mib": max(r["peak_hwm_kib"] or r["init_hwm_kib"] for r in runs) / 1024,
        }
        row["output_bytes_median"] = statistics.median(r["output_bytes"] for r in runs)
        invokes = [ms for r in runs for ms in r["invoke_ms"]]
        if invokes:
            row["first_invoke_ms_median"] = statistics.median(invokes)
        rows.append(row)

    with_invoke = any("first_invoke_ms_median" in r for r in rows)
    header = (
        "| binary | size | init median (ms) | p90 | min | × hello | init CPU median (ms) | × hello "
        "| RSS at init (MiB) | peak RSS (MiB) |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if with_invoke:
        header += " first invocation median (ms) | log bytes |"
        rule += "---:|---:|"
    print(header)
    print(rule)
    for r in rows:
        line = (
            f"| {r['name']} | {r['size_bytes'] / 2**20:.1f} MiB | {r['init_ms_median']:.1f} | "
            f"{r['init_ms_p90']:.1f} | {r['init_ms_min']:.1f} | {r['ratio_to_hello']:.2f} | "
            f"{r['init_cpu_ms_median']:.1f} | {r['cpu_ratio_to_hello']:.2f} | "
            f"{r['init_rss_mib']:.1f} | {r['peak_rss_mib']:.1f} |"
        )
        if with_invoke:
            invoke = r.get("first_invoke_ms_median")
            line += f" {invoke:.1f} |" if invoke is not None else " |"
            line += f" {r['output_bytes_median']:.0f} |"
        print(line)
    if with_invoke:
        print(f"\nCRM requests answered: {Api.crm_requests}")
    if args.json:
        # The runs, each with the end of what the function wrote.
        Path(args.json).write_text(json.dumps({"rows": rows, "raw": results}, indent=2))


if __name__ == "__main__":
    main()
