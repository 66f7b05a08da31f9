#!/usr/bin/env python3
"""Creates the queues, tables and KMS keys of template.yaml on an AWS endpoint (the moto
emulator), from the template's own resource properties, and prints what it created as one JSON
object.

The tests (tests/aws.rs) and infra/aws/emulator.sh run it, so the emulated resources are the
deployed ones: a property changed in the template changes them too, and a property this
script does not know stops it rather than being left out. It also resolves each function's
environment variables, routes and queue events, so the tests configure the handlers as the
template configures the Lambdas.

    resources.py --endpoint http://127.0.0.1:5000 [--param NamePrefix=t1 ...]

Runs with the Python of .venv (PyYAML and boto3 come with moto).
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path

import boto3
import botocore.exceptions
import yaml

ROOT = Path(__file__).resolve().parents[2]
# moto's account; any credentials are accepted.
ACCOUNT_ID = "123456789012"


class TemplateLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (`!Ref X`, `!GetAtt X.Arn`, `!Sub ...`)."""


def _intrinsic(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}


TemplateLoader.add_multi_constructor("!", _intrinsic)


class Pending(Exception):
    """A value refers to a resource not created yet."""


class Stack:
    def __init__(self, template, overrides, region, stack_name):
        self.template = template
        self.region = region
        self.parameters = {}
        for name, spec in template.get("Parameters", {}).items():
            if name in overrides:
                value = overrides[name]
            elif "Default" in spec:
                value = spec["Default"]
            else:
                sys.exit(f"resources.py: parameter {name} has no default: pass --param {name}=...")
            if spec.get("Type") == "Number":
                value = int(value)
            self.parameters[name] = value
        unknown = set(overrides) - set(self.parameters)
        if unknown:
            sys.exit(f"resources.py: the template has no parameter {', '.join(sorted(unknown))}")
        self.pseudo = {
            "AWS::Region": region,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::StackName": stack_name,
            "AWS::URLSuffix": "amazonaws.com",
        }
        # What `!Ref` and `!GetAtt` give for each created resource.
        self.refs = {}
        self.attributes = {}

    def ref(self, name):
        for known in (self.pseudo, self.parameters, self.refs):
            if name in known:
                return known[name]
        raise Pending(name)

    def get_att(self, resource, attribute):
        try:
            return self.attributes[resource][attribute]
        except KeyError:
            raise Pending(f"{resource}.{attribute}") from None

    def resolve(self, value):
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                return self.get_att(*arg)
            if key == "Fn::Sub":
                return self.sub(arg)
            if key == "Fn::Join":
                separator, parts = arg
                return separator.join(str(p) for p in self.resolve(parts))
            if key.startswith("Fn::"):
                sys.exit(f"resources.py: {key} is not supported: teach it or avoid it")
        return {k: self.resolve(v) for k, v in value.items()}

    def sub(self, arg):
        text, variables = (arg, {}) if isinstance(arg, str) else arg
        variables = self.resolve(variables)

        def replace(match):
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                return str(self.get_att(*name.split(".", 1)))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}!]+)\}", replace, text)


# CloudFormation's property of an SQS queue -> the CreateQueue attribute, for those whose
# value is not a plain string.
JSON_QUEUE_PROPERTIES = {"RedrivePolicy", "RedriveAllowPolicy"}
QUEUE_PROPERTIES = {
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "DelaySeconds",
    "FifoQueue",
    "FifoThroughputLimit",
    "KmsDataKeyReusePeriodSeconds",
    "KmsMasterKeyId",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
} | JSON_QUEUE_PROPERTIES


def create_queue(sqs, properties):
    name = properties["QueueName"]
    attributes = {}
    for key, value in properties.items():
        if key == "QueueName":
            continue
        if key not in QUEUE_PROPERTIES:
            sys.exit(f"resources.py: queue {name}: property {key} is not emulated: teach it")
        if key in JSON_QUEUE_PROPERTIES:
            attributes[key] = json.dumps(value)
        elif isinstance(value, bool):
            attributes[key] = "true" if value else "false"
        else:
            attributes[key] = str(value)
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    created = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return url, {"Arn": created["QueueArn"], "QueueName": name, "QueueUrl": url}, {
        "name": name,
        "url": url,
        "arn": created["QueueArn"],
        "attributes": created,
    }


TABLE_CREATE_PROPERTIES = {
    "TableName",
    "KeySchema",
    "AttributeDefinitions",
    "BillingMode",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "ProvisionedThroughput",
    "StreamSpecification",
    "DeletionProtectionEnabled",
}


def create_table(dynamodb, properties):
    name = properties["TableName"]
    create = {}
    for key, value in properties.items():
        if key in TABLE_CREATE_PROPERTIES:
            create[key] = value
        elif key == "SSESpecification":
            sse = {"Enabled": value.get("SSEEnabled", False)}
            if "SSEType" in value:
                sse["SSEType"] = value["SSEType"]
            if "KMSMasterKeyId" in value:
                sse["KMSMasterKeyId"] = value["KMSMasterKeyId"]
            create[key] = sse
        elif key not in ("TimeToLiveSpecification", "PointInTimeRecoverySpecification"):
            sys.exit(f"resources.py: table {name}: property {key} is not emulated: teach it")
    arn = dynamodb.create_table(**create)["TableDescription"]["TableArn"]
    if "TimeToLiveSpecification" in properties:
        dynamodb.update_time_to_live(
            TableName=name, TimeToLiveSpecification=properties["TimeToLiveSpecification"]
        )
    if "PointInTimeRecoverySpecification" in properties:
        dynamodb.update_continuous_backups(
            TableName=name,
            PointInTimeRecoverySpecification=properties["PointInTimeRecoverySpecification"],
        )
    return name, {"Arn": arn}, {"name": name, "arn": arn}


KEY_PROPERTIES = {"Description", "EnableKeyRotation", "KeyPolicy", "KeySpec", "KeyUsage"}


def create_key(kms, properties):
    unknown = set(properties) - KEY_PROPERTIES
    if unknown:
        sys.exit(f"resources.py: KMS key: properties {', '.join(sorted(unknown))} are not emulated")
    create = {}
    for key in ("Description", "KeySpec", "KeyUsage"):
        if key in properties:
            create[key] = properties[key]
    if "KeyPolicy" in properties:
        create["Policy"] = json.dumps(properties["KeyPolicy"])
    key = kms.create_key(**create)["KeyMetadata"]
    if properties.get("EnableKeyRotation"):
        kms.enable_key_rotation(KeyId=key["KeyId"])
    return key["KeyId"], {"Arn": key["Arn"], "KeyId": key["KeyId"]}, {
        "id": key["KeyId"],
        "arn": key["Arn"],
    }


def describe_function(stack, globals_, properties):
    merged = dict(globals_)
    merged.update(properties)
    variables = merged.get("Environment", {}).get("Variables", {})
    routes, queue_events = [], []
    for event in merged.get("Events", {}).values():
        props = event.get("Properties", {})
        if event["Type"] == "HttpApi":
            routes.append({"method": props["Method"].upper(), "path": props["Path"]})
        elif event["Type"] == "SQS":
            queue = props["Queue"]
            queue_events.append(
                {
                    # The logical id of the queue the event reads.
                    "queue": queue["Fn::GetAtt"][0],
                    "batch_size": props.get("BatchSize", 10),
                    "report_batch_item_failures": "ReportBatchItemFailures"
                    in props.get("FunctionResponseTypes", []),
                }
            )
    return {
        "name": stack.resolve(merged.get("FunctionName")),
        "timeout": stack.resolve(merged.get("Timeout", 3)),
        # Lambda's default, as for Timeout.
        "memory_size": stack.resolve(merged.get("MemorySize", 128)),
        "environment": {k: str(v) for k, v in stack.resolve(variables).items()},
        "routes": routes,
        "queue_events": queue_events,
    }


def wait_for(endpoint, client, seconds=30):
    """The emulator may still be starting: wait until it answers."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.list_queues()
            return
        except botocore.exceptions.EndpointConnectionError:
            if time.monotonic() > deadline:
                sys.exit(f"resources.py: nothing answers at {endpoint} after {seconds} s")
            time.sleep(0.1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="the emulator, e.g. http://127.0.0.1:5000")
    parser.add_argument("--region", default="eu-west-1")
    parser.add_argument("--stack-name", default="callbridge")
    parser.add_argument("--template", default=str(ROOT / "template.yaml"))
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="a template parameter, e.g. NamePrefix=test1 (default: the template's)",
    )
    args = parser.parse_args()
    overrides = dict(p.split("=", 1) for p in args.param)
    template = yaml.load(Path(args.template).read_text(), Loader=TemplateLoader)
    stack = Stack(template, overrides, args.region, args.stack_name)

    session = boto3.session.Session(
        aws_access_key_id="emulator",
        aws_secret_access_key="emulator",
        region_name=args.region,
    )
    sqs = session.client("sqs", endpoint_url=args.endpoint)
    dynamodb = session.client("dynamodb", endpoint_url=args.endpoint)
    kms = session.client("kms", endpoint_url=args.endpoint)
    wait_for(args.endpoint, sqs)

    creators = {
        "AWS::SQS::Queue": ("queues", lambda props: create_queue(sqs, props)),
        "AWS::DynamoDB::Table": ("tables", lambda props: create_table(dynamodb, props)),
        "AWS::KMS::Key": ("keys", lambda props: create_key(kms, props)),
    }
    resources = template["Resources"]
    # Roles are not emulated (the emulator does not enforce IAM), but the key policy names
    # them: they get the ARN CloudFormation would give.
    for name, resource in resources.items():
        if resource["Type"] == "AWS::IAM::Role":
            stack.refs[name] = f"{args.stack_name}-{name}"
            stack.attributes[name] = {
                "Arn": f"arn:aws:iam::{ACCOUNT_ID}:role/{args.stack_name}-{name}"
            }
    todo = [name for name, r in resources.items() if r["Type"] in creators]
    out = {
        "endpoint": args.endpoint,
        "region": args.region,
        "parameters": stack.parameters,
        "queues": {},
        "tables": {},
        "keys": {},
        "functions": {},
    }
    # Resources refer to each other (a queue to its dead-letter queue): create whatever can
    # be resolved, until everything is.
    while todo:
        progressed = False
        for name in list(todo):
            kind, create = creators[resources[name]["Type"]]
            try:
                properties = stack.resolve(resources[name].get("Properties", {}))
            except Pending:
                continue
            ref, attributes, described = create(properties)
            stack.refs[name], stack.attributes[name] = ref, attributes
            out[kind][name] = described
            todo.remove(name)
            progressed = True
        if not progressed:
            sys.exit(f"resources.py: cannot resolve {', '.join(todo)}")

    globals_ = template.get("Globals", {}).get("Function", {})
    for name, resource in resources.items():
        if resource["Type"] == "AWS::Serverless::Function":
            try:
                out["functions"][name] = describe_function(stack, globals_, resource["Properties"])
            except Pending as missing:
                sys.exit(f"resources.py: function {name} refers to {missing}, which is not emulated")
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
