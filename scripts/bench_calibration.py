#!/usr/bin/env python3
"""The calibration scan's side effect, KL on neutral text: one setting per forward pass (as `calibrate` measures
each strength) against several settings in one pass (every neutral text once per setting, each sequence under
its own setting: `NeutralKL(settings_per_pass=N).many`, at most 512 MiB of logits per pass). Would a scan that
measures several strengths at once be faster on this machine?

On each model: the shipped neutral texts, `--settings` AUSteer settings (top-100 units of one site at growing
strengths, as a scan's steps are). Way A measures each setting alone, way B all in one pass; the two alternate,
in rotating order, for `--rounds` rounds. Printed: median seconds per setting of each way, the median of the
per-round ratios A / B, and the largest KL difference between the two ways.

    .venv/bin/python scripts/bench_calibration.py                  # both built-in models, 3 rounds
"""

from __future__ import annotations

import argparse
import statistics

from benchlib import alternate, median_ratio, spread_profile

from austeer_gguf import SteeringSetting, models
from austeer_gguf.engine.hooked import HookedLlama
from austeer_gguf.evaluation.calibrate import neutral_texts
from austeer_gguf.evaluation.evaluate import NeutralKL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for model in args.models.split(","):
        bench_model(model, args)


def bench_model(model: str, args: argparse.Namespace) -> None:
    llm = HookedLlama.for_evaluation(models.fetch(model), verbose=False, n_threads=args.threads,
                                     n_threads_batch=args.threads)
    shape = llm.shape
    profile = spread_profile("attn", 100, shape.n_layers, shape.widths["attn"], seed=0)
    settings = [SteeringSetting.make(shape, profiles=[(profile, 1.0)], strength=0.01 * 2 ** i)
                for i in range(args.settings)]
    kl = NeutralKL(llm, neutral_texts())
    batched = NeutralKL(llm, neutral_texts(), settings_per_pass=len(settings))
    tokens = kl.tokens

    def alone() -> list[float]:
        return kl.many(settings)

    def together() -> list[float]:
        return batched.many(settings)

    runs, values = alternate({"alone": alone, "together": together}, args.rounds)
    seconds = {name: [value / len(settings) for value in times] for name, times in runs.items()}
    gap = max(abs(a - b) for a, b in zip(values["alone"], values["together"]))
    print(f"\nmodel {model}: {len(settings)} settings x {len(tokens)} neutral texts "
          f"({sum(map(len, tokens))} tokens), {args.rounds} rounds, {args.threads} threads")
    print(f"  one setting per pass:     {statistics.median(seconds['alone']):6.3f} s per setting")
    print(f"  all settings in one pass: {statistics.median(seconds['together']):6.3f} s per setting")
    print(f"  ratio (median of rounds): {median_ratio(seconds['alone'], seconds['together']):6.2f}x")
    print(f"  largest KL difference between the ways: {gap:.2e} (KL values {min(values['alone']):.3g}.."
          f"{max(values['alone']):.3g})")
    llm.close()


if __name__ == "__main__":
    main()
