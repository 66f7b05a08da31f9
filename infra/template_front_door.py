#!/usr/bin/env python3
"""The template's front doors, checked for each value of FrontDoor (docs/aws.md, "Front door").

cfn-lint checks that the template is valid CloudFormation whatever the parameters; this checks
what it means. For each FrontDoor, with the Conditions evaluated: every ingest function has a
public function URL with both permissions Lambda requires exactly when FrontDoor is
FunctionUrl, and no permission lets the public invoke it any other way; each provider's output
URL is a route of the function that serves it, through that function's own URL or the HTTP API;
reserved concurrency caps the ingest functions exactly when there is no API throttle in front;
the dashboard names only resources that exist.

    .venv/bin/python infra/template_front_door.py [template.yaml]
"""

import re
import sys

import yaml

FRONT_DOORS = ("HttpApi", "FunctionUrl")


class Tagged(yaml.SafeLoader):
    """CloudFormation's short forms (!Ref, !If, ...) read as their long forms."""


def _long_form(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if suffix == "Condition":
        name = "Condition"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
        return {name: value}
    if isinstance(node, yaml.SequenceNode):
        return {name: loader.construct_sequence(node, deep=True)}
    return {name: loader.construct_mapping(node, deep=True)}


Tagged.add_multi_constructor("!", _long_form)


class Stack:
    """The template as deployed with `parameters`: conditions evaluated, Fn::If resolved."""

    def __init__(self, template, parameters):
        self.template = template
        self.parameters = {
            name: str(parameters.get(name, spec.get("Default", ""))) for name, spec in template["Parameters"].items()
        }
        self.conditions = {}

    def condition(self, name):
        if name not in self.conditions:
            self.conditions[name] = self.truth(self.template["Conditions"][name])
        return self.conditions[name]

    def truth(self, expression):
        (function, argument), = expression.items()
        if function == "Condition":
            return self.condition(argument)
        if function == "Fn::Equals":
            left, right = (self.scalar(a) for a in argument)
            return left == right
        if function == "Fn::Not":
            return not self.truth(argument[0])
        if function == "Fn::And":
            return all(self.truth(a) for a in argument)
        if function == "Fn::Or":
            return any(self.truth(a) for a in argument)
        raise ValueError(f"condition function {function}")

    def scalar(self, value):
        if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in self.parameters:
            return self.parameters[value["Ref"]]
        return str(value)

    def resolve(self, value):
        """`value` with every Fn::If taken; None where it is AWS::NoValue."""
        if isinstance(value, dict):
            if set(value) == {"Fn::If"}:
                name, then, otherwise = value["Fn::If"]
                return self.resolve(then if self.condition(name) else otherwise)
            if value == {"Ref": "AWS::NoValue"}:
                return None
            return {k: r for k, v in value.items() if (r := self.resolve(v)) is not None}
        if isinstance(value, list):
            return [r for v in value if (r := self.resolve(v)) is not None]
        return value

    def resources(self):
        """The resources that exist, resolved."""
        return {
            name: self.resolve(resource)
            for name, resource in self.template["Resources"].items()
            if "Condition" not in resource or self.condition(resource["Condition"])
        }

    def outputs(self):
        return {
            name: self.resolve(output)
            for name, output in self.template["Outputs"].items()
            if "Condition" not in output or self.condition(output["Condition"])
        }


def sub_text(value):
    """The text of a resolved Fn::Sub: the string, its variables put in when given."""
    sub = value["Fn::Sub"]
    if isinstance(sub, str):
        return sub
    text, variables = sub
    for name, variable in variables.items():
        text = text.replace("${" + name + "}", sub_text(variable) if isinstance(variable, dict) else variable)
    return text


def check(template, front_door):
    """The failures of `template` deployed with FrontDoor=`front_door` (an empty list: none)."""
    stack = Stack(template, {"FrontDoor": front_door, "CrmUrl": "https://crm.example.com/"})
    resources = stack.resources()
    failures = []
    urls_wanted = front_door == "FunctionUrl"

    ingest = {
        name: resource
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Serverless::Function"
        and resource["Properties"]["CodeUri"].startswith("functions/ingest-")
    }
    if len(ingest) != 4:
        failures.append(f"{len(ingest)} ingest functions, not the four providers'")
    routes = {
        name: {event["Properties"]["Path"] for event in f["Properties"]["Events"].values() if event["Type"] == "HttpApi"}
        for name, f in ingest.items()
    }

    url_of = {}
    for name, resource in resources.items():
        if resource["Type"] == "AWS::Lambda::Url":
            target = resource["Properties"]["TargetFunctionArn"]["Fn::GetAtt"][0]
            if target in url_of:
                failures.append(f"{target} has two function URLs")
            url_of[target] = name
            if resource["Properties"].get("AuthType") != "NONE":
                failures.append(f"{name}: AuthType is not NONE, the providers cannot sign with SigV4")
    for function in ingest:
        if urls_wanted and function not in url_of:
            failures.append(f"{function} has no function URL")
        if not urls_wanted and function in url_of:
            failures.append(f"{function} has a function URL ({url_of[function]}) without FrontDoor FunctionUrl")

    public = {}
    for name, resource in resources.items():
        if resource["Type"] != "AWS::Lambda::Permission" or resource["Properties"].get("Principal") != "*":
            continue
        properties = resource["Properties"]
        function = properties["FunctionName"].get("Ref")
        if properties["Action"] == "lambda:InvokeFunctionUrl" and properties.get("FunctionUrlAuthType") == "NONE":
            public.setdefault(function, set()).add("url")
        elif properties["Action"] == "lambda:InvokeFunction" and properties.get("InvokedViaFunctionUrl") is True:
            public.setdefault(function, set()).add("invoke via url")
        else:
            failures.append(f"{name}: lets anyone call {function} other than through its function URL")
    for function in ingest:
        granted = public.get(function, set())
        wanted = {"url", "invoke via url"} if function in url_of else set()
        if granted != wanted:
            failures.append(f"{function}: public permissions {sorted(granted)}, wanted {sorted(wanted)}")

    for function, resource in ingest.items():
        reserved = resource["Properties"].get("ReservedConcurrentExecutions")
        if urls_wanted and reserved is None:
            failures.append(f"{function}: no reserved concurrency, and no API throttle in front of its URL")
        if not urls_wanted and reserved is not None:
            failures.append(f"{function}: reserved concurrency behind the HTTP API's throttle")

    api = re.compile(r"https://\$\{HttpApi\}\.execute-api\.\$\{AWS::Region\}\.\$\{AWS::URLSuffix\}(/.*)")
    function_url = re.compile(r"\$\{(\w+)\.FunctionUrl\}(.*)")
    named = set()
    for name, output in stack.outputs().items():
        if not (name.startswith("WebhookUrl") or name == "TelsmartActivationUrl"):
            continue
        text = sub_text(output["Value"])
        if urls_wanted:
            m = function_url.fullmatch(text)
            serving = [f for f, u in url_of.items() if m and u == m.group(1)]
            if not serving or "/" + m.group(2) not in routes[serving[0]]:
                failures.append(f"output {name} ({text}) is not a route of the function whose URL it names")
                continue
            named.add((serving[0], "/" + m.group(2)))
        else:
            m = api.fullmatch(text)
            serving = [f for f, paths in routes.items() if m and m.group(1) in paths]
            if not serving:
                failures.append(f"output {name} ({text}) is not a route of the HTTP API")
                continue
            named.add((serving[0], m.group(1)))
    for function, paths in routes.items():
        for path in paths:
            if path.startswith("/webhooks/") and (function, path) not in named:
                failures.append(f"no output gives the URL of {function}'s {path}")

    body = sub_text(resources["Dashboard"]["Properties"]["DashboardBody"])
    builtin = {"AWS::Region", "AWS::URLSuffix", "AWS::AccountId", "AWS::Partition"}
    for reference in re.findall(r"\$\{([\w:]+)(?:\.\w+)?\}", body):
        if reference not in resources and reference not in stack.parameters and reference not in builtin:
            failures.append(f"the dashboard names {reference}, which does not exist")
    return failures


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
    with open(path) as f:
        template = yaml.load(f, Loader=Tagged)
    failed = False
    for front_door in FRONT_DOORS:
        failures = check(template, front_door)
        for failure in failures:
            print(f"FrontDoor={front_door}: {failure}", file=sys.stderr)
        failed |= bool(failures)
        print(f"FrontDoor={front_door}: {'FAILED' if failures else 'ok'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
