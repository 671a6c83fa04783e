#!/usr/bin/env python3
"""The evidence run's test measurement of a generation task (`GenerationTask.measure_test`: 3 sampled seeds of
the test prompts, harmless side prompts on the first, each reply scored after its own and after the next
request), two ways, alternated in rotating order:
  A  one seed at a time, each decode's sequences in the caller's order (before `decoder.sharing_order`)
  B  the seeds in one decode, sequences sorted by prompt setting and tokens, so a prompt given for 3 seeds
     (and a request that scores 3 replies) is computed once
on the detox test items under an AUSteer-like profile (attn, 20 units spread over the layers). Printed: median
seconds per measurement of each way, the median of the per-round ratios A / B, and the share of replies that
are the same both ways (they may differ where batch composition changes the float rounding).

    .venv/bin/python scripts/bench_test_phase.py      # both built-in models, 3 rounds of 40 items
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

from benchlib import alternate, median_ratio, spread_profile

from austeer_gguf import SteeringSetting, models
from austeer_gguf.engine import decoder
from austeer_gguf.engine.hooked import HookedLlama
from austeer_gguf.evaluation.tasks import load_task

SEEDS, TEMPERATURE, MAX_TOKENS = 3, 0.7, 16  # the evidence run's generation grid (scripts/run_evidence.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3", help="built-in names or GGUF paths")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for model in args.models.split(","):
        bench_model(str(models.fetch(model)) if model in models.MODELS else model, args)


@contextlib.contextmanager
def in_callers_order():
    """Decode sequences in the order they are given, as before `sharing_order`."""
    sorted_order = decoder.sharing_order
    decoder.sharing_order = lambda sequences, settings: list(range(len(sequences)))
    try:
        yield
    finally:
        decoder.sharing_order = sorted_order


def bench_model(path: str, args: argparse.Namespace) -> None:
    llm = HookedLlama.for_evaluation(path, verbose=False, n_threads=args.threads, n_threads_batch=args.threads)
    task = load_task("detox")
    profile = spread_profile("attn", 20, llm.shape.n_layers, llm.shape.widths["attn"])
    setting = SteeringSetting.make(llm.shape, profiles=[(profile, 1.0)])

    def one_seed_at_a_time() -> list[str]:
        with in_callers_order():
            runs = [task.evaluate(llm, "test", setting=setting, limit=args.items, max_tokens=MAX_TOKENS,
                                  temperature=TEMPERATURE, seed=1000 * seed, side=seed == 0) for seed in range(SEEDS)]
        return [item["reply"] for run in runs for item in run.items]

    def seeds_together() -> list[str]:
        measured = task.measure_test(llm, setting, prompted=False, limit=args.items, seeds=SEEDS,
                                     temperature=TEMPERATURE, max_tokens=MAX_TOKENS)
        return [item["reply"] for item in measured["items"]]

    seconds, replies = alternate({"A": one_seed_at_a_time, "B": seeds_together}, args.rounds)
    same = statistics.mean(a == b for a, b in zip(replies["A"], replies["B"]))
    print(f"\nmodel {path}: {args.items} detox test items x {SEEDS} seeds ({MAX_TOKENS} tokens, temperature "
          f"{TEMPERATURE}) + {args.items} harmless prompts, {args.rounds} rounds, {args.threads} threads")
    print(f"way A (one seed at a time, caller's order) {statistics.median(seconds['A']):7.1f} s")
    print(f"way B (seeds together, sharing order)      {statistics.median(seconds['B']):7.1f} s")
    print(f"A / B {median_ratio(seconds['A'], seconds['B']):.2f}; replies the same both ways: {same:.1%}")
    llm.close()


if __name__ == "__main__":
    main()
