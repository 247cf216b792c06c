#!/usr/bin/env python3
"""Parses a metrics exposition (stdin) with prometheus_client's parsers, the ones Prometheus'
Python tooling uses, and prints its samples as JSON lines:
{"name": ..., "labels": {...}, "value": ..., "type": ...}. A malformed exposition fails.

Without arguments the input is the Prometheus text format (0.0.4). That parser accepts the
samples of a family apart from its HELP and TYPE lines (it yields them again as untyped
families): a family name that comes out twice fails here, as the format requires each family's
samples together. With --openmetrics the input is OpenMetrics 1.0.0 text, whose parser is
strict itself (families together, `# EOF` last, counters named without `_total`)."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as text_format

parse = openmetrics if sys.argv[1:] == ["--openmetrics"] else text_format
seen = set()
for family in parse(sys.stdin.read()):
    if family.name in seen:
        sys.exit(f"the samples of {family.name} are not together (its family comes twice)")
    seen.add(family.name)
    for s in family.samples:
        print(json.dumps({"name": s.name, "labels": s.labels, "value": s.value, "type": family.type}))
