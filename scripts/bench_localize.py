#!/usr/bin/env python3
"""Localization speed and memory on the float copy of SmolLM2-135M-Instruct.

Data: --pairs yes/no pairs of about 44 tokens (the kind of data the AUSteer reference was timed on: it ran
400 such pairs at 2.9 pairs/s with 1.67 GB peak memory on this 2-core machine, attn site, float32).
Modes, each run in its own process (so its peak RSS is its own), alternated over --rounds rounds:
  shared    batched, a pair's prompt held once in shared KV cells (the default)
  full      batched, both full texts of every pair decoded
  single    one text per decode
  forward   the same batches as `shared` without capturing anything (the capture overhead baseline)
Printed: median pairs/s, ratios, and peak RSS.

    .venv/bin/python scripts/bench_localize.py
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

SUBJECTS = ["a cat", "the sun", "a bicycle", "water", "an apple", "the moon", "a whale", "ice", "a spider",
            "gold", "a car", "an elephant", "salt", "a violin", "the ocean", "a pencil", "snow", "a bee"]
PROPERTIES = ["alive", "hot", "made of metal", "a liquid", "edible", "bigger than a house", "able to fly",
              "cold", "able to swim", "heavier than a feather", "a musical instrument", "white"]


def make_pairs(n: int, seed: int = 0):
    from austeer_gguf.localization.pairs import Pair

    rng = np.random.default_rng(seed)
    preamble = ("Answer the question with yes or no. Think about what you know of everyday objects, animals and "
                "materials before you answer.\n")
    pairs = []
    for _ in range(n):
        subject, prop = SUBJECTS[rng.integers(len(SUBJECTS))], PROPERTIES[rng.integers(len(PROPERTIES))]
        good, bad = (" Yes", " No") if rng.random() < 0.5 else (" No", " Yes")
        pairs.append(Pair(f"{preamble}Question: Is {subject} {prop}?\nAnswer:", good, bad))
    return pairs


def run_mode(mode: str, model: str, n_pairs: int, site: str, threads: int) -> dict:
    from austeer_gguf import OFF
    from austeer_gguf.localization.capture import ActivationCapture, PairActivations
    from austeer_gguf.localization.pairs import tokenize_pairs
    from austeer_gguf.localization.reducers import MomentumCounts

    class ForwardOnly(ActivationCapture):
        """The same groups and decodes as `shared`, with the last rows as outputs and nothing captured."""

        def pairs(self, pairs, sites, *, share_prefix=True, setting=OFF):
            texts = [tokens for pair in pairs for tokens in (pair.positive, pair.negative)]
            for group in self._decoder.groups(texts, bundle=2, share=share_prefix, settings=[setting] * len(texts)):
                for cell in set(group.last_cells()):
                    group.cells[cell].output = True
                self._decoder.decode_group(group)
                n = len(group.members) // 2
                zeros = {s: np.zeros((n, self.shape.n_layers, self.shape.widths[s]), np.float32) for s in sites}
                yield PairActivations(list(range(n)), zeros, zeros)

    kind = ForwardOnly if mode == "forward" else ActivationCapture
    batch_tokens = 1024
    with kind(model, batch_tokens=batch_tokens, n_threads=threads, n_seq_max=2 if mode == "single" else 64) as capture:
        tokenized = tokenize_pairs(make_pairs(n_pairs), capture.tokenize, max_tokens=512).pairs
        tokens_per_text = statistics.mean(len(p.positive) for p in tokenized)
        counts = MomentumCounts(capture.shape.n_layers, {site: capture.shape.widths[site]})
        start = time.perf_counter()
        if mode == "single":
            for pair in tokenized:
                values = [capture.last_tokens([text], [site])[site] for text in (pair.positive, pair.negative)]
                counts.add(site, values[0], values[1])
        else:
            for group in capture.pairs(tokenized, [site], share_prefix=mode != "full"):
                counts.add(site, group.positive[site], group.negative[site])
        seconds = time.perf_counter() - start
    return {"pairs_per_s": n_pairs / seconds, "seconds": seconds, "tokens_per_text": tokens_per_text,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="float GGUF (default: the f32 copy of the built-in SmolLM2)")
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--site", default="attn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="shared,full,single,forward")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_mode(args.child, args.model, args.pairs, args.site, args.threads)))
        return
    if args.model is None:
        from austeer_gguf import models

        args.model = str(models.float_copy("smollm2", "f32"))
    modes = args.modes.split(",")
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    for round_index in range(args.rounds):
        for mode in modes[round_index % len(modes):] + modes[: round_index % len(modes)]:
            command = [sys.executable, __file__, "--child", mode, "--model", args.model, "--pairs", str(args.pairs),
                       "--site", args.site, "--threads", str(args.threads)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[mode].append(json.loads(output.strip().splitlines()[-1]))
            print(f"round {round_index + 1} {mode}: {results[mode][-1]['pairs_per_s']:.2f} pairs/s", flush=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    print(f"\nmodel {args.model}\n{args.pairs} pairs, {median(modes[0], 'tokens_per_text'):.1f} tokens per text, "
          f"site {args.site}, {args.threads} threads, {args.rounds} rounds (medians)")
    print(f"{'mode':8} {'pairs/s':>8} {'peak RSS MB':>12}")
    for mode in modes:
        print(f"{mode:8} {median(mode, 'pairs_per_s'):8.2f} {median(mode, 'peak_rss_mb'):12.0f}")
    if "shared" in results:
        for other in ("full", "single"):
            if other in results:
                ratio = statistics.median(a["pairs_per_s"] / b["pairs_per_s"]
                                          for a, b in zip(results["shared"], results[other]))
                print(f"shared / {other}: {ratio:.2f}x faster")
        if "forward" in results:
            overhead = statistics.median(a["seconds"] / b["seconds"]
                                         for a, b in zip(results["shared"], results["forward"]))
            print(f"capture overhead (shared vs forward of the same batches): {overhead:.3f}x time")
        reference = 2.9
        print(f"vs the AUSteer reference (2.9 pairs/s, 1.67 GB): {median('shared', 'pairs_per_s') / reference:.2f}x")


if __name__ == "__main__":
    main()
