#!/usr/bin/env python3
"""A build's dev trials: one setting per evaluation (as builds ran before) against several settings in one
decode (`GenerationTask.evaluate_settings`, as `build` runs a method's trials now).

On each model: the detox task's first `--items` dev items and its harmless side prompts, greedy 24-token
replies, scored as the build scores them (judges, perplexity, relevance); `--settings` AUSteer settings (top-100
units of attn, ffn and layer spread over the model, at growing strengths; what a method's calibrated trials
look like), plus unsteered. Way A evaluates each setting alone, way B all together; the two alternate, in
rotating order, for `--rounds` rounds. Printed: median seconds per trial of each way and the median of the
per-round ratios A / B, and whether the two ways gave the same replies.

    .venv/bin/python scripts/bench_build_dev.py                  # both built-in models, 3 rounds
"""

from __future__ import annotations

import argparse
import statistics

from benchlib import alternate, median_ratio, spread_profile

from austeer_gguf import SteeringSetting, models
from austeer_gguf.engine.hooked import HookedLlama
from austeer_gguf.evaluation.tasks import load_task
from austeer_gguf.setting import OFF


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=14)
    parser.add_argument("--settings", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for model in args.models.split(","):
        bench_model(model, args)


def bench_model(model: str, args: argparse.Namespace) -> None:
    llm = HookedLlama.for_evaluation(models.fetch(model), verbose=False, n_threads=args.threads,
                                     n_threads_batch=args.threads)
    task = load_task("detox")
    shape = llm.shape
    sites = ("attn", "ffn", "layer")
    settings = [OFF] + [SteeringSetting.make(shape, profiles=[(spread_profile(sites[i % 3], 100, shape.n_layers,
                                                                               shape.widths[sites[i % 3]], seed=i),
                                                               1.0)], strength=0.02 * (1 + i // 3))
                        for i in range(args.settings - 1)]

    def alone():
        return [task.evaluate(llm, "dev", setting=setting, limit=args.items, max_tokens=24) for setting in settings]

    def together():
        return task.evaluate_settings(llm, "dev", settings, limit=args.items, max_tokens=24)

    runs, results = alternate({"alone": alone, "together": together}, args.rounds)
    seconds = {name: [value / len(settings) for value in values] for name, values in runs.items()}
    replies = {name: [[item["reply"] for item in result.items] for result in measured]
               for name, measured in results.items()}
    same = sum(a == b for a, b in zip(replies["alone"], replies["together"]))
    side = len(task.side("dev", args.items))
    print(f"\nmodel {model}: {len(settings)} settings x {args.items} detox dev items + {side} harmless prompts, "
          f"24 tokens, {args.rounds} rounds, {args.threads} threads")
    print(f"  one setting per evaluation:   {statistics.median(seconds['alone']):6.2f} s per trial")
    print(f"  all settings in one decode:   {statistics.median(seconds['together']):6.2f} s per trial")
    print(f"  ratio (median of rounds):     {median_ratio(seconds['alone'], seconds['together']):6.2f}x")
    print(f"  settings with identical replies both ways: {same} of {len(settings)}")
    llm.close()


if __name__ == "__main__":
    main()
