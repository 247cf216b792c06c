#!/usr/bin/env python3
"""Parses a Prometheus text exposition (stdin) with prometheus_client's parser, the one
Prometheus' Python tooling uses, and prints its samples as JSON lines:
{"name": ..., "labels": {...}, "value": ..., "type": ...}. A malformed exposition fails."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

text = sys.stdin.read()
for family in text_string_to_metric_families(text):
    for s in family.samples:
        print(json.dumps({"name": s.name, "labels": s.labels, "value": s.value, "type": family.type}))
