#!/usr/bin/env python3
"""Turns bench/compare.sh's oha JSON files into a markdown table of medians."""
import json
import statistics
import sys
from pathlib import Path

out, targets, scenarios = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()


def runs(scenario, target):
    for f in sorted(out.glob(f"{scenario}.{target}.*.json")):
        try:
            yield json.loads(f.read_text())
        except (json.JSONDecodeError, OSError):
            continue


def median(values):
    return statistics.median(values) if values else None


rows = []
for scenario in scenarios:
    base = None
    cells = {}
    for target in targets:
        data = list(runs(scenario, target))
        if not data:
            continue
        rps = median([d["summary"]["requestsPerSec"] for d in data])
        p50 = median([d["latencyPercentiles"]["p50"] or 0 for d in data])
        p99 = median([d["latencyPercentiles"]["p99"] or 0 for d in data])
        ok = median([d["summary"]["successRate"] for d in data])
        statuses = {}
        for d in data:
            for k, v in (d.get("statusCodeDistribution") or {}).items():
                statuses[k] = statuses.get(k, 0) + v
        non200 = sum(v for k, v in statuses.items() if k != "200")
        cells[target] = (rps, p50, p99, ok, non200, len(data))
    base = cells.get("nginx")
    for target, (rps, p50, p99, ok, non200, n) in cells.items():
        # Features measured on a logged-in visitor compare with the same proxy
        # and visitor without them.
        if target in ("sessiongate-users", "sessiongate-assertion"):
            own = cells.get("sessiongate-login")
        else:
            own = cells.get("sessiongate")
        ratio = f"{rps / base[0]:.2f}" if base and base[0] else "n/a"
        mine = f"{rps / own[0]:.3f}" if own and own[0] else "n/a"
        rows.append(
            f"| {scenario} | {target} | {rps:,.0f} | {p50 * 1000:.2f} | {p99 * 1000:.2f} "
            f"| {ok * 100:.1f}% | {non200} | {ratio} | {mine} | {n} |"
        )

print("| scenario | target | req/s | p50 ms | p99 ms | success | non-200 | × nginx | × sessiongate (¹) | runs |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
print("\n".join(rows))
print()
print("(¹) sessiongate-users and sessiongate-assertion: × sessiongate-login (the same logged-in visitor, without the feature).")
