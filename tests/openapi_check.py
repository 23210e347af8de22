#!/usr/bin/env python3
"""Checks deploy/openapi.yaml against itself and against live answers.

    python3 tests/openapi_check.py SPEC [OBSERVED.json]

Run by tests/openapi.rs. Always checks that every example in SPEC (media type,
parameter, header and schema examples) is valid against its schema. With
OBSERVED.json, a list of answers the test got from a live admin listener:

    [{"method": "GET", "path": "/sessions/{id}", "url": "/sessions/abc...",
      "status": 200, "headers": {"content-type": "..."}, "body": "..."}]

checks that each operation and status is documented, that the Content-Type is
one documented for that status (none for a response without content), that
every required header is present and valid, and that the body (JSON, or the
text itself) is valid against the documented schema, with JSON Schema 2020-12,
OpenAPI 3.1's dialect.

Prints one line per problem and exits 1 when there is any.
"""

import json
import re
import sys
import urllib.parse

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_URI = "urn:sessiongate:admin-openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def pointer(*parts):
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class Spec:
    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self.doc = yaml.safe_load(f)
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(SPEC_URI, resource)

    def resolve(self, node, where):
        """Follows a component $ref (responses, parameters, headers); answers
        the node and its JSON pointer."""
        seen = 0
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"{where}: only local $refs are supported: {ref}")
            where = ref[1:]
            node = self.doc
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            seen += 1
            if seen > 20:
                raise ValueError(f"{where}: $ref loop")
        return node, where

    def validator(self, schema_pointer):
        """A validator for the schema at schema_pointer, its $refs resolved in the spec."""
        fragment = urllib.parse.quote(schema_pointer, safe="/~")
        return jsonschema.Draft202012Validator(
            {"$ref": f"{SPEC_URI}#{fragment}"}, registry=self.registry
        )

    def operations(self):
        for path, item in self.doc.get("paths", {}).items():
            for method in METHODS:
                if method in item:
                    yield method.upper(), path, item[method]


def schema_errors(spec, schema_pointer, instance):
    errors = sorted(spec.validator(schema_pointer).iter_errors(instance), key=str)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors
    ]


def check_examples(spec):
    """Every example in the spec is valid against the schema beside it."""
    problems = []

    def examples_of(node, where):
        found = []
        if "example" in node:
            found.append((where + "/example", node["example"]))
        for name, example in (node.get("examples") or {}).items():
            example, at = spec.resolve(example, f"{where}/examples/{name}")
            if "value" in example:
                found.append((at + "/value", example["value"]))
        return found

    def with_schema(node, where):
        if "schema" not in node:
            return
        for at, value in examples_of(node, where):
            for e in schema_errors(spec, where + "/schema", value):
                problems.append(f"example {at} does not match its schema: {e}")

    def walk(node, where, in_schema):
        if isinstance(node, dict):
            if "$ref" in node:
                return
            if in_schema and isinstance(node.get("examples"), list):
                for i, value in enumerate(node["examples"]):
                    for e in schema_errors(spec, where, value):
                        problems.append(f"schema example {where}/examples/{i}: {e}")
            if not in_schema and "schema" in node:
                with_schema(node, where)
            for key, child in node.items():
                if not in_schema and key in ("example", "examples"):
                    continue
                child_in_schema = in_schema or key == "schema" or where == "/components/schemas"
                walk(child, where + pointer(key), child_in_schema)
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, where + pointer(i), in_schema)

    walk(spec.doc, "", False)
    return problems


def template_regex(template):
    parts = re.split(r"(\{[^}/]+\})", template)
    return re.compile(
        "^" + "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$"
    )


def check_observed(spec, observed):
    problems = []
    operations = {(m, p): op for m, p, op in spec.operations()}
    for n, seen in enumerate(observed):
        method, template, status = seen["method"], seen["path"], seen["status"]
        label = f"#{n} {method} {seen['url']} -> {status}"
        op = operations.get((method, template))
        if op is None:
            problems.append(f"{label}: {method} {template} is not in the spec")
            continue
        url = urllib.parse.urlsplit(seen["url"])
        if not template_regex(template).match(url.path):
            problems.append(f"{label}: the path does not match {template}")
        item = spec.doc["paths"][template]
        params = [
            spec.resolve(p, "")[0] for p in item.get("parameters", []) + op.get("parameters", [])
        ]
        query_names = {p["name"] for p in params if p["in"] == "query"}
        for name, _ in urllib.parse.parse_qsl(url.query, keep_blank_values=True):
            if name not in query_names:
                problems.append(f"{label}: query parameter {name!r} is not documented")

        where = pointer("paths", template, method.lower(), "responses", str(status))
        response = op.get("responses", {}).get(str(status))
        if response is None:
            problems.append(
                f"{label}: status {status} is not documented "
                f"(documented: {sorted(op.get('responses', {}))})"
            )
            continue
        response, where = spec.resolve(response, where)
        headers = {k.lower(): v for k, v in seen["headers"].items()}

        for name, header in (response.get("headers") or {}).items():
            header, at = spec.resolve(header, where + pointer("headers", name))
            value = headers.get(name.lower())
            if value is None:
                if header.get("required"):
                    problems.append(f"{label}: no {name} header")
                continue
            for e in schema_errors(spec, at + "/schema", value):
                problems.append(f"{label}: header {name}: {value!r}: {e}")

        content = response.get("content") or {}
        body = seen["body"]
        got_type = headers.get("content-type")
        if not content:
            if got_type is not None or body != "":
                problems.append(
                    f"{label}: documented without content, got "
                    f"Content-Type {got_type!r} and {len(body)} bytes"
                )
            continue
        if got_type is None:
            problems.append(f"{label}: no Content-Type (documented: {sorted(content)})")
            continue
        normal = lambda t: ";".join(part.strip().lower() for part in t.split(";"))
        match = [t for t in content if normal(t) == normal(got_type)]
        if not match:
            problems.append(
                f"{label}: Content-Type {got_type!r} is not documented "
                f"(documented: {sorted(content)})"
            )
            continue
        media = content[match[0]]
        if "schema" not in media:
            continue
        if normal(match[0]).split(";")[0].endswith("json"):
            try:
                instance = json.loads(body)
            except ValueError as e:
                problems.append(f"{label}: not JSON ({e}): {body!r}")
                continue
        else:
            instance = body
        for e in schema_errors(spec, where + pointer("content", match[0], "schema"), instance):
            problems.append(f"{label}: body does not match the schema: {e}\n    body: {body!r}")
    return problems


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    spec = Spec(sys.argv[1])
    problems = check_examples(spec)
    observed = []
    if len(sys.argv) == 3:
        with open(sys.argv[2], encoding="utf-8") as f:
            observed = json.load(f)
        problems += check_observed(spec, observed)
    for p in problems:
        print(p)
    print(
        f"openapi_check: {len(observed)} answers checked, {len(problems)} problems",
        file=sys.stderr,
    )
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
