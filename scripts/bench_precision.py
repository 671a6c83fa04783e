#!/usr/bin/env python3
"""Localization without a float32 copy: which weight precision finds the same units?

For each built-in model, localize the same pairs (all three sites) on copies of the model with F32, F16, BF16
and Q8_0 weights and on the shipped quantized file, each in a process of its own; print, against F32: the
overlap of the top-100 units (per site, and all sites ranked together), the Spearman correlation of all
signed scores, the sign agreement of the top-100, and each run's time and peak memory (max RSS).

    .venv/bin/python scripts/bench_precision.py                       # both models, 1,000 polite-chat pairs
    .venv/bin/python scripts/bench_precision.py --models smollm2 --pairs 400
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PRECISIONS = ("f32", "f16", "bf16", "q8_0", "shipped")


def worker(model: str, pairs: int, out: str) -> None:
    """Localize in this process and save the counts."""
    from austeer_gguf import datasets, sites
    from austeer_gguf.localization.capture import PairCapture
    from austeer_gguf.localization.pairs import load_pairs
    from austeer_gguf.localization.reducers import MomentumCounts

    data = load_pairs(datasets.pairs_path("polite-chat", "train"))[:pairs]
    start = time.perf_counter()
    with PairCapture(model, data, sites.SITES, n_threads=2, progress=False) as capture:
        counts = MomentumCounts.for_shape(capture.shape, sites.SITES)
        capture.feed(counts)
    seconds = time.perf_counter() - start
    np.savez(out, seconds=seconds, n_pairs=counts.n_pairs, peak_mb=peak_rss_mb(),
             **{f"{site}_{kind}": getattr(counts, kind)[site] for site in sites.SITES
                for kind in ("positive", "negative")})


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM starts afresh at exec; the rusage a parent gets from wait4
    does not (it keeps the parent's own size at fork), which would hide every run smaller than the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def scores(run: dict, site: str) -> np.ndarray:
    positive, negative, n = run[f"{site}_positive"], run[f"{site}_negative"], int(run["n_pairs"])
    return np.where(positive >= negative, positive / n, -negative / n)


def top(run: dict, site_list: tuple[str, ...], k: int = 100) -> list[tuple]:
    """The top-k (layer, site, dim) over the given sites, ranked as localization ranks them."""
    from austeer_gguf.localization.reducers import MomentumCounts, rank_units

    first = run[f"{site_list[0]}_positive"]
    counts = MomentumCounts(first.shape[0], {s: run[f"{s}_positive"].shape[1] for s in site_list},
                            int(run["n_pairs"]), {s: run[f"{s}_positive"] for s in site_list},
                            {s: run[f"{s}_negative"] for s in site_list})
    return [(u.layer, u.site, u.dim, np.sign(u.score)) for u in rank_units(counts, k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--scratch", help="keep the copies and runs in this folder and reuse the finished ones "
                        "(default: a temporary folder, removed at the end)")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "PAIRS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.worker[2])
        return

    from austeer_gguf import models, sites
    from austeer_gguf.ggufio.dequantize import dequantize

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="austeer-precision-"))
    scratch.mkdir(parents=True, exist_ok=True)
    table = []
    for name in args.models.split(","):
        shipped = models.fetch(name)
        files = {"f32": models.float_copy(name), "shipped": shipped}
        for precision in ("f16", "bf16", "q8_0"):
            files[precision] = scratch / f"{name}.{precision}.gguf"
            if not files[precision].exists():
                dequantize(shipped, files[precision], dtype=precision)
        runs = {}
        for precision in PRECISIONS:
            out = scratch / f"{name}.{precision}.{args.pairs}.npz"
            if not out.exists():
                child = subprocess.Popen([sys.executable, __file__, "--worker", str(files[precision]),
                                          str(args.pairs), str(out)])
                if child.wait() != 0:
                    raise SystemExit(f"the {precision} run of {name} failed")
            runs[precision] = dict(np.load(out))
            runs[precision]["file_mb"] = files[precision].stat().st_size / 2**20
        reference = runs["f32"]
        for precision in PRECISIONS:
            run = runs[precision]
            row = {"model": name, "weights": precision, "file_mb": round(run["file_mb"]),
                   "seconds": round(float(run["seconds"]), 1), "peak_rss_mb": round(float(run["peak_mb"])),
                   "pairs": int(run["n_pairs"])}
            for site in sites.SITES:
                row[f"top100_{site}"] = len(set(top(run, (site,))) & set(top(reference, (site,)))) / 100
                row[f"spearman_{site}"] = round(spearman(scores(run, site).ravel(),
                                                         scores(reference, site).ravel()), 4)
            row["top100_all_sites"] = len(set(top(run, sites.SITES)) & set(top(reference, sites.SITES))) / 100
            table.append(row)
            print(json.dumps(row), flush=True)
    if not args.scratch:
        shutil.rmtree(scratch)
    print("\n| model | weights | file MB | s | peak RSS MB | top-100 overlap attn / ffn / layer / all "
          "| Spearman attn / ffn / layer |")
    print("|---|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['model']} | {row['weights']} | {row['file_mb']} | {row['seconds']} | {row['peak_rss_mb']} | "
              f"{row['top100_attn']:.2f} / {row['top100_ffn']:.2f} / {row['top100_layer']:.2f} / "
              f"{row['top100_all_sites']:.2f} | {row['spearman_attn']:.3f} / {row['spearman_ffn']:.3f} / "
              f"{row['spearman_layer']:.3f} |")


if __name__ == "__main__":
    main()
