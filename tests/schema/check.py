"""Validates pipeline files against weir's JSON Schema with an independent validator.

usage: check.py SCHEMA.json FILE.yaml...
Checks the schema itself against the draft-07 meta-schema, then prints one JSON line per
file: {"file": ..., "errors": ["path: message", ...]} (empty errors: the file is valid).
"""
import json
import sys

import jsonschema
import yaml


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    for path in sys.argv[2:]:
        try:
            with open(path, encoding="utf-8") as f:
                doc = yaml.safe_load(f)
            errors = [
                f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
                for e in validator.iter_errors(doc)
            ]
        except yaml.YAMLError as e:
            errors = [f"not YAML: {e}"]
        print(json.dumps({"file": path, "errors": errors}))


if __name__ == "__main__":
    main()
