#!/usr/bin/env python3
"""The evidence run's test measurement of a generation task (`GenerationTask.measure_test`: 3 sampled seeds of
the test prompts, harmless side prompts on the first, each reply scored after its own and after the next
request), up to three ways, alternated in rotating order:
  A  one seed at a time, each decode's sequences in the caller's order (before `decoder.sharing_order`), each
     reply scored after its own request and after the next one in two passes (before `reply_relevance`)
  B  the seeds in one decode, sequences sorted by prompt setting and tokens, so a prompt given for 3 seeds
     (and a request that scores 3 replies) is computed once; scored in two passes
  C  B, scored in one pass, so a request is computed once for its own replies and the previous item's
on the detox test items under an AUSteer-like profile (attn, 20 units spread over the layers). Printed: median
seconds per measurement of each way, the median of the per-round ratios against the last way, and the share of
replies that are the same as the last way's (they may differ where batch composition changes the float
rounding; a reply's scores, not the reply, are what C changes).

    .venv/bin/python scripts/bench_test_phase.py                 # both built-in models, ways B and C
    .venv/bin/python scripts/bench_test_phase.py --ways A,B,C    # all three (A takes about as long as B and C)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

from benchlib import alternate, median_ratio, spread_profile

from austeer_gguf import SteeringSetting, models
from austeer_gguf.engine import decoder
from austeer_gguf.engine.hooked import HookedLlama
from austeer_gguf.evaluation import evaluate
from austeer_gguf.evaluation.tasks import load_task

SEEDS, TEMPERATURE, MAX_TOKENS = 3, 0.7, 16  # the evidence run's generation grid (scripts/run_evidence.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3", help="built-in names or GGUF paths")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ways", default="B,C", help="which of A, B and C to run, comma-separated")
    args = parser.parse_args()
    if not args.ways or set(args.ways.split(",")) - {"A", "B", "C"}:
        parser.error(f"--ways takes some of A, B and C, comma-separated, not {args.ways!r}")
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


@contextlib.contextmanager
def scored_in_two_passes():
    """Score replies after their own requests and after the next ones in separate passes."""
    merged = evaluate._logprobs_after
    evaluate._logprobs_after = lambda llm, lists, texts, **options: [merged(llm, [prompts], texts, **options)[0]
                                                                    for prompts in lists]
    try:
        yield
    finally:
        evaluate._logprobs_after = merged


def bench_model(path: str, args: argparse.Namespace) -> None:
    llm = HookedLlama.for_evaluation(path, verbose=False, n_threads=args.threads, n_threads_batch=args.threads)
    task = load_task("detox")
    profile = spread_profile("attn", 20, llm.shape.n_layers, llm.shape.widths["attn"])
    setting = SteeringSetting.make(llm.shape, profiles=[(profile, 1.0)])

    def one_seed_at_a_time() -> list[str]:
        with in_callers_order(), scored_in_two_passes():
            runs = [task.evaluate(llm, "test", setting=setting, limit=args.items, max_tokens=MAX_TOKENS,
                                  temperature=TEMPERATURE, seed=1000 * seed, side=seed == 0) for seed in range(SEEDS)]
        return [item["reply"] for run in runs for item in run.items]

    def seeds_together() -> list[str]:
        measured = task.measure_test(llm, setting, prompted=False, limit=args.items, seeds=SEEDS,
                                     temperature=TEMPERATURE, max_tokens=MAX_TOKENS)
        return [item["reply"] for item in measured["items"]]

    def seeds_together_two_passes() -> list[str]:
        with scored_in_two_passes():
            return seeds_together()

    ways = {"A": (one_seed_at_a_time, "one seed at a time, caller's order, two passes"),
            "B": (seeds_together_two_passes, "seeds together, sharing order, two passes"),
            "C": (seeds_together, "seeds together, sharing order, one pass")}
    chosen = {name: ways[name] for name in args.ways.split(",")}
    seconds, replies = alternate({name: run for name, (run, _) in chosen.items()}, args.rounds)
    last = list(chosen)[-1]
    print(f"\nmodel {path}: {args.items} detox test items x {SEEDS} seeds ({MAX_TOKENS} tokens, temperature "
          f"{TEMPERATURE}) + {args.items} harmless prompts, {args.rounds} rounds, {args.threads} threads")
    for name, (_, description) in chosen.items():
        same = statistics.mean(a == b for a, b in zip(replies[name], replies[last]))
        print(f"way {name} ({description + ')':48} {statistics.median(seconds[name]):7.1f} s   "
              f"{name} / {last} {median_ratio(seconds[name], seconds[last]):.2f}; replies as {last}'s: {same:.1%}")
    llm.close()


if __name__ == "__main__":
    main()
