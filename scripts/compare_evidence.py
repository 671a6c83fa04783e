#!/usr/bin/env python3
"""Two evidence runs side by side (folders of `scripts/run_evidence.py --out`, model/task.json): per model and
task, the minutes of each part before and after, and how far the figures moved where both runs measured the
same thing: the KL of every setting both screened, the dev score and perplexity ratio of every setting both
measured on dev, how many of each budget's choices are the same setting, and the test score of each method
where both chose the same setting. Reports written by other judges or method sets compare where they overlap.

    git archive 3a0a507 reports/evidence | tar -x -C /tmp/before      # the first whole run's reports
    .venv/bin/python scripts/compare_evidence.py /tmp/before/reports/evidence /tmp/evidence-after
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def key(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True)


def largest(pairs: list[tuple[float, float]], relative: bool = False) -> str:
    if not pairs:
        return "-"
    gaps = [abs(a - b) / max(abs(a), 1e-12) if relative else abs(a - b) for a, b in pairs]
    return f"{max(gaps):.2g}{' rel.' if relative else ''} (median {sorted(gaps)[len(gaps) // 2]:.2g})"


def compare(before: dict, after: dict) -> list[str]:
    trials_before = {key(t["setting"]): t for t in before["trials"]}
    trials_after = {key(t["setting"]): t for t in after["trials"]}
    both = [(trials_before[k], trials_after[k]) for k in trials_before.keys() & trials_after.keys()]
    screened = [(a["kl"], b["kl"]) for a, b in both if a["kl"] > 0]
    measured = [(a, b) for a, b in both if a["score"] is not None and b["score"] is not None]
    lines = [f"  settings screened by both: {len(screened)}, largest KL difference {largest(screened, True)}",
             f"  settings measured on dev by both: {len(measured)}, largest score difference "
             f"{largest([(a['score'], b['score']) for a, b in measured])}, perplexity ratio "
             f"{largest([(a['perplexity_ratio'], b['perplexity_ratio']) for a, b in measured])}"]
    for budget, chosen in before["chosen"].items():
        methods = chosen.keys() & after["chosen"].get(budget, {}).keys()
        same = [m for m in methods if key(chosen[m]["setting"]) == key(after["chosen"][budget][m]["setting"])]
        tests = [(before["test"][budget][m]["score"], after["test"][budget][m]["score"]) for m in same]
        lines.append(f"  budget {budget}: {len(same)} of {len(methods)} methods chose the same setting; their "
                     f"test scores differ by at most {largest(tests)}")
    return lines


def minutes(report: dict) -> tuple[float, str]:
    seconds = report.get("seconds") or {}
    return sum(seconds.values()) / 60, ", ".join(f"{part} {value / 60:.1f}" for part, value in seconds.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    total_before = total_after = 0.0
    for path in sorted(args.after.glob("*/*.json")):
        earlier = args.before / path.parent.name / path.name
        if not earlier.exists():
            continue
        before, after = json.loads(earlier.read_text()), json.loads(path.read_text())
        (minutes_before, parts_before), (minutes_after, parts_after) = minutes(before), minutes(after)
        total_before, total_after = total_before + minutes_before, total_after + minutes_after
        print(f"{path.parent.name} / {path.stem}: {minutes_before:.1f} min ({parts_before}) -> {minutes_after:.1f} "
              f"min ({parts_after}), {minutes_before / minutes_after:.2f}x")
        print("\n".join(compare(before, after)))
    if total_after:
        print(f"total: {total_before:.1f} min -> {total_after:.1f} min, {total_before / total_after:.2f}x")


if __name__ == "__main__":
    main()
