#!/usr/bin/env python3
"""Cost per million webhooks on AWS, from the calls the emulator test counted.

Reads the output of

    cargo test -p callbridge --features aws --test aws reads_and_writes_per_event_are_counted -- --nocapture

(its `usage of ...` lines: the DynamoDB reads and writes, their request units, and the SQS
sends the adapters of shared/src/adapters/aws/ counted, see shared/src/adapters/aws/usage.rs) on standard input
and prices a million webhooks of a call like Telsmart's held-and-resumed one (ringing, answer,
hold, resume, hangup: five webhooks, three Morph events) at the list prices below. What the
emulator cannot tell (how long an invocation runs on AWS, how many messages a batch holds) is
an assumption, printed with the result; change it with the options.

    ... | benches/cost.py [--ingest-ms 12] [--worker-ms 25] [--crm-ms 100] [--batch 1]
                          [--log-bytes 821] [--front-door http-api|function-url]

The table prices the front door of --front-door (template.yaml's FrontDoor: HttpApi or
FunctionUrl); the last line gives the total with either.
"""

import argparse
import re
import sys

# List prices, US East (N. Virginia), on-demand, first tier, in USD; the AWS pricing pages as
# of 2026-11 (DynamoDB on-demand after its 1 November 2024 cut). eu-west-1 is within a few
# percent for Lambda and SQS and about 13% dearer for DynamoDB on-demand.
PRICES = {
    "lambda_arm_gb_s": 0.0000133334,  # per GB-second, arm64, first 7.5 billion GB-s a month
    "lambda_request": 0.20 / 1e6,  # per invocation
    "sqs_fifo_request": 0.50 / 1e6,  # per request (per 64 KiB chunk of payload)
    "dynamodb_wru": 0.625 / 1e6,  # per write request unit (1 KiB)
    "dynamodb_rru": 0.125 / 1e6,  # per read request unit (4 KiB strongly consistent)
    "http_api_request": 1.00 / 1e6,  # per request, first 300 million a month (512 KiB each)
    # A function URL has no charge of its own: its requests are the ingest's invocations, priced
    # above (https://aws.amazon.com/lambda/pricing/).
    "function_url_request": 0.0,
    "logs_ingested_gb": 0.50,  # CloudWatch Logs, standard class, per GB ingested
}
MEMORY_GB = {"ingest": 128 / 1024, "worker": 256 / 1024}  # template.yaml's MemorySize
# Log bytes that are not the functions' own lines: Lambda's START, END and REPORT lines of an
# invocation (about 260 bytes, read off the cold-start harness's invocations; none at the
# template's default PlatformLogLevel, WARN) and the HTTP API's access log line of a request
# (template.yaml's format, about 300 bytes).
LAMBDA_PLATFORM_LOG_BYTES = 260
ACCESS_LOG_BYTES = 300
# What the providers call, by --front-door: (line of the table, price per request, access log
# bytes per request).
FRONT_DOORS = {
    "http-api": ("API Gateway HTTP API", PRICES["http_api_request"], ACCESS_LOG_BYTES),
    "function-url": ("Lambda function URLs", PRICES["function_url_request"], 0),
}


def parse_usage(text):
    """{scenario name: counts} from the test's `usage of NAME (...): UsageCounts { ... }` lines,
    and the ingest's counts."""
    usage = {}
    for line in text.splitlines():
        m = re.search(r"usage of (\S+) \((\d+) webhooks, (\d+) revisions\), a batch each: UsageCounts \{(.*)\}", line)
        if m:
            counts = dict((k, int(v)) for k, v in re.findall(r"(\w+): (\d+)", m.group(4)))
            usage["quiet"] = {"name": m.group(1), "webhooks": int(m.group(2)), "revisions": int(m.group(3)), **counts}
        m = re.search(r"^\s*ingest: UsageCounts \{(.*)\}", line)
        if m:
            usage["ingest"] = dict((k, int(v)) for k, v in re.findall(r"(\w+): (\d+)", m.group(1)))
        m = re.search(r"usage of (\S+) \((\d+) webhooks, a revision each\)", line)
        if m:
            usage["ingest_webhooks"] = int(m.group(2))
    if "quiet" not in usage or "ingest" not in usage:
        sys.exit("cost.py: no `usage of ...` lines on standard input (run the test with --nocapture)")
    return usage


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ingest-ms", type=float, default=12, help="billed ms of one ingest invocation")
    parser.add_argument(
        "--worker-ms", type=float, default=25, help="billed ms of one worker invocation, the CRM request aside"
    )
    parser.add_argument("--crm-ms", type=float, default=100, help="ms of one CRM request (the worker waits)")
    parser.add_argument("--batch", type=float, default=1, help="messages per worker batch (1 when calls are quiet)")
    parser.add_argument(
        "--log-bytes",
        type=float,
        default=821,
        help="the functions' own log and metric bytes per webhook, a batch each (tests/aws_logs.rs); "
        "Lambda's and the HTTP API's lines are added",
    )
    parser.add_argument(
        "--platform-log-level",
        choices=["WARN", "INFO"],
        default="WARN",
        help="template.yaml's PlatformLogLevel: at INFO Lambda writes its START, END and REPORT lines",
    )
    parser.add_argument(
        "--front-door",
        choices=sorted(FRONT_DOORS),
        default="http-api",
        help="what the providers call (template.yaml's FrontDoor): priced in the table",
    )
    args = parser.parse_args()
    usage = parse_usage(sys.stdin.read())
    q = usage["quiet"]
    n = q["webhooks"]
    per_webhook = {
        "call_reads": q["call_reads"] / n,
        "call_read_units": q["call_read_units"] / n,
        "call_writes": q["call_writes"] / n,
        "call_write_units": q["call_write_units"] / n,
        "queue_sends": usage["ingest"]["queue_sends"] / usage["ingest_webhooks"],
        "crm_requests": q["revisions"] / n,
    }
    million = 1e6
    batches = million / args.batch
    platform_bytes = LAMBDA_PLATFORM_LOG_BYTES if args.platform_log_level == "INFO" else 0
    # The event source mapping receives a batch and deletes it with one DeleteMessageBatch.
    sqs_requests = million * per_webhook["queue_sends"] + 2 * batches
    worker_seconds = (batches * args.worker_ms + million * per_webhook["crm_requests"] * args.crm_ms) / 1000
    lines = [
        ("Lambda requests (ingest + worker)", "invocations", million + batches, (million + batches) * PRICES["lambda_request"]),
        (
            "Lambda duration, ingest (128 MB)",
            "GB-s",
            million * args.ingest_ms / 1000 * MEMORY_GB["ingest"],
            million * args.ingest_ms / 1000 * MEMORY_GB["ingest"] * PRICES["lambda_arm_gb_s"],
        ),
        (
            "Lambda duration, worker (256 MB)",
            "GB-s",
            worker_seconds * MEMORY_GB["worker"],
            worker_seconds * MEMORY_GB["worker"] * PRICES["lambda_arm_gb_s"],
        ),
        ("SQS FIFO (send, receive, delete)", "requests", sqs_requests, sqs_requests * PRICES["sqs_fifo_request"]),
        (
            "DynamoDB writes",
            "WRU",
            million * per_webhook["call_write_units"],
            million * per_webhook["call_write_units"] * PRICES["dynamodb_wru"],
        ),
        (
            "DynamoDB reads",
            "RRU",
            million * per_webhook["call_read_units"],
            million * per_webhook["call_read_units"] * PRICES["dynamodb_rru"],
        ),
    ]

    def by_door(door):
        """The front door's line and the log line, which holds the door's access log."""
        name, price, access_log_bytes = FRONT_DOORS[door]
        log_bytes = million * (args.log_bytes + access_log_bytes)
        log_bytes += (million + batches) * platform_bytes
        return [
            ("CloudWatch Logs ingestion", "GB", log_bytes / 1e9, log_bytes / 1e9 * PRICES["logs_ingested_gb"]),
            (name, "requests", million, million * price),
        ]

    behind_the_door = sum(cost for *_, cost in lines)
    lines += by_door(args.front_door)
    total = sum(cost for *_, cost in lines)
    print(
        f"Per webhook, from the emulator ({q['name']}, {n} webhooks, {q['revisions']} Morph events): "
        f"{per_webhook['call_reads']:.2f} DynamoDB reads ({per_webhook['call_read_units']:.2f} RRU), "
        f"{per_webhook['call_writes']:.2f} writes ({per_webhook['call_write_units']:.2f} WRU), "
        f"{per_webhook['queue_sends']:.2f} SQS sends, {per_webhook['crm_requests']:.2f} CRM requests "
        f"({q['revisions']} a call)."
    )
    print(
        f"Assumed: ingest {args.ingest_ms:g} ms, worker {args.worker_ms:g} ms + {args.crm_ms:g} ms per CRM "
        f"request, {args.batch:g} message(s) a batch, {args.log_bytes:g} log bytes a webhook from the "
        f"functions, {platform_bytes} from Lambda an invocation (PlatformLogLevel {args.platform_log_level}), "
        f"{ACCESS_LOG_BYTES} of access log "
        f"a request through the HTTP API.\n"
    )
    print("| per million webhooks | quantity | USD | share |")
    print("|---|---:|---:|---:|")
    for name, unit, quantity, cost in sorted(lines, key=lambda line: -line[3]):
        amount = f"{quantity:,.0f}" if quantity >= 100 else f"{quantity:.2f}"
        print(f"| {name} | {amount} {unit} | {cost:.2f} | {cost / total:.0%} |")
    print(f"| **total** | | **{total:.2f}** | |")
    either = ", ".join(
        f"{FRONT_DOORS[door][0]} {behind_the_door + sum(cost for *_, cost in by_door(door)):.2f}"
        for door in FRONT_DOORS
    )
    print(f"\nTotal per million webhooks by front door (USD): {either}.")


if __name__ == "__main__":
    main()
