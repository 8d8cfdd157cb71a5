"""A pytest JUnit XML report as the JSON a Tier 2 result file keeps.

Usage: python3 scripts/junit_summary.py REPORT.xml [--set KEY=VALUE]...
Prints {"passed", "failed", "skipped", "tests": [{"name", "outcome", "message"}], KEY: VALUE…}.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET


def summary(path: str) -> dict:
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (node.get("message") or "")[:500]
                break
        tests.append({"name": f"{case.get('classname', '')}::{case.get('name', '')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": message})
    count = {k: sum(1 for t in tests if t["outcome"] == k) for k in ("passed", "failed", "skipped")}
    return {**count, "tests": tests}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    out = {}
    rest = argv[1:]
    while rest:
        if rest[0] != "--set" or len(rest) < 2 or "=" not in rest[1]:
            print(f"junit_summary: expected --set KEY=VALUE, got {rest[0]!r}", file=sys.stderr)
            return 2
        key, value = rest[1].split("=", 1)
        out[key] = value
        rest = rest[2:]
    try:
        out.update(summary(argv[0]))
    except (OSError, ET.ParseError) as e:
        out.update({"passed": 0, "failed": 0, "skipped": 0, "tests": [], "error": f"no pytest report: {e}"})
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
