#!/usr/bin/env python3
"""Turn matched-cost sweep results (reports/evidence/<model>/<task>.json) into reports/evidence/<model>.md with
Pareto plots, and reports/evidence/summary.md with the headline tables of every model and task
(austeer_gguf/evaluation/report.py does the work).

    .venv/bin/python scripts/report.py                       # every model under reports/evidence
    .venv/bin/python scripts/report.py --reports DIR --models smollm2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from austeer_gguf.evaluation.report import load, write_model_report, write_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", default="reports/evidence")
    parser.add_argument("--models", help="comma separated (default: every folder under --reports)")
    args = parser.parse_args()
    root = Path(args.reports)
    names = args.models.split(",") if args.models else sorted(p.name for p in root.iterdir() if p.is_dir())
    all_reports = {name: reports for name in names if (reports := load(root / name))}
    for name, reports in all_reports.items():
        print(write_model_report(name, reports, root))
    if all_reports:
        print(write_summary(all_reports, root))


if __name__ == "__main__":
    main()
