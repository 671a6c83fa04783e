#!/usr/bin/env python3
"""`embed` time against a plain copy of the same file, alternated over --rounds rounds (medians).

Compared: embed (stream + verify + fsync + rename), a plain copy (shutil.copyfile), and a plain copy
followed by fsync (what a crash-safe copy costs).

    .venv/bin/python scripts/bench_embed.py            # SmolLM2-135M-Instruct Q4_1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from austeer_gguf import Profile, Unit, models
from austeer_gguf.formats.embedded import embed_profiles


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    source = models.resolve(args.model)
    profile = Profile("bench", 10.0, [Unit(layer, "attn", layer * 3, 0.5) for layer in range(20)])

    with tempfile.TemporaryDirectory(dir=source.parent) as scratch:
        target = Path(scratch) / "out.gguf"

        def copy_fsync() -> None:
            shutil.copyfile(source, target)
            with target.open("rb+") as file:
                os.fsync(file.fileno())

        actions = {"embed": lambda: embed_profiles(source, [profile], target),
                   "copy": lambda: shutil.copyfile(source, target), "copy+fsync": copy_fsync}
        times: dict[str, list[float]] = {name: [] for name in actions}
        for action in actions.values():  # warm the page cache
            action()
        for _ in range(args.rounds):
            for name, action in actions.items():
                times[name].append(timed(action))
    size = source.stat().st_size / 1e6
    print(f"{source.name} ({size:.0f} MB), {args.rounds} rounds, medians")
    for name in actions:
        print(f"{name:11} {statistics.median(times[name]):.3f} s")
    for base in ("copy", "copy+fsync"):
        ratio = statistics.median(e / c for e, c in zip(times["embed"], times[base]))
        print(f"embed / {base}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
