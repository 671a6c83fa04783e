#!/usr/bin/env python3
"""The shipped detox profile of each built-in model: `python -m austeer_gguf build <model> detox`, then a copy
of the profile it writes into the package.

For each model the build writes `reports/detox/detox-<model>.json` (the profile), `.md` and `.png` (its report
card) and `.build.json` (every per-item result; a rerun resumes from it, `--fresh` starts over). The profile
is copied to python/austeer_gguf/data/profiles/detox-<model>.json with the card's path in its `report` field.
When the build writes no profile (its winner steers nothing), the shipped one is left as it is and this says so.

    .venv/bin/python scripts/build_detox.py                        # both models, 25 minutes each
    .venv/bin/python scripts/build_detox.py --models smollm2 --minutes 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from austeer_gguf.apps.cli import main as cli
from austeer_gguf.formats.profiles import read_profile, write_profile

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "python" / "austeer_gguf" / "data" / "profiles"
REPORTS = ROOT / "reports" / "detox"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--minutes", default="25")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    REPORTS.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        built = REPORTS / f"detox-{name}.json"
        status = cli(["build", name, "detox", "--minutes", args.minutes, "--threads", args.threads, "-o", str(built),
                      "--force", *(["--fresh"] if args.fresh else [])])
        if status != 0:
            raise SystemExit(status)
        winner = json.loads(built.with_suffix(".build.json").read_text())["build"]["winner"]
        if winner is None or not built.exists():
            print(f"{name}: the build shipped nothing (see {built.with_suffix('.md')}); the shipped profile is kept")
            continue
        profile = read_profile(built)
        report = str(built.with_suffix(".md").relative_to(ROOT))
        shipped = write_profile(dataclasses.replace(profile, extra={**profile.extra, "report": report}),
                                PROFILES / f"detox-{name}.json")
        print(f"{name}: shipped {shipped.relative_to(ROOT)} ({profile.extra.get('method')})")


if __name__ == "__main__":
    main()
