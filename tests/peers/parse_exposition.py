#!/usr/bin/env python3
"""Parses a /metrics exposition from stdin with the Python prometheus-client's parsers, and
prints what they found as JSON, for tests/metrics.rs.

Usage: parse_exposition.py openmetrics|prometheus < exposition

- `openmetrics`: prometheus_client.openmetrics.parser, a strict OpenMetrics 1.0 parser (it
  rejects a missing `# EOF`, bad exemplars, wrong suffixes, out-of-order or interleaved
  families, non-cumulative buckets, ...).
- `prometheus`: prometheus_client.parser, the classic text format 0.0.4.

Output: {"families": [{"name", "type", "unit", "samples": [{"name", "labels", "value",
"exemplar": null | {"labels", "value", "timestamp"}}]}]}. Numbers are strings (`repr` of the
float), so `+Inf` and `NaN` survive JSON. Exit 1 with the parser's message when the text does not
parse; exit 3 when prometheus-client is missing (run scripts/install-test-deps.sh).
"""

import json
import sys


def number(v):
    return None if v is None else repr(float(v))


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("openmetrics", "prometheus"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if sys.argv[1] == "openmetrics":
            from prometheus_client.openmetrics.parser import text_string_to_metric_families
        else:
            from prometheus_client.parser import text_string_to_metric_families
    except ImportError as e:
        print(f"prometheus-client is missing ({e}): run scripts/install-test-deps.sh",
              file=sys.stderr)
        return 3

    text = sys.stdin.read()
    families = []
    try:
        # The parsers are generators: errors surface only as the text is consumed.
        for family in text_string_to_metric_families(text):
            samples = []
            for s in family.samples:
                ex = s.exemplar
                samples.append({
                    "name": s.name,
                    "labels": dict(s.labels),
                    "value": number(s.value),
                    "exemplar": None if ex is None else {
                        "labels": dict(ex.labels),
                        "value": number(ex.value),
                        "timestamp": number(ex.timestamp),
                    },
                })
            families.append({
                "name": family.name,
                "type": family.type,
                "unit": family.unit,
                "samples": samples,
            })
    except Exception as e:  # the parsers raise ValueError, and a few others on odd input
        print(f"{sys.argv[1]} parser rejected the exposition: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
    json.dump({"families": families}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
