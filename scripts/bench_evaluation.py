#!/usr/bin/env python3
"""Evaluation cost: one sequence per llama_decode against groups of them (austeer_gguf/engine/decoder.py).

The same calls the evidence run makes, on its own items, with way A (`max_sequences=1`: one sequence per
decode, as llama-cpp-python's own calls run) and way B (the context's 16), alternated in rotating order:
  generate   16 greedy tokens after each of the detox dev items (chat template and prefill)
  score      the rows that score prompt + reply (perplexity of a generation)
  kl         every position of the 30 neutral texts the KL screen reads
  choices    word-polarity-question dev items: prompt plus each answer
Printed: median milliseconds per item (kl: per screen) of each way and the median of the per-round ratios A / B.

    .venv/bin/python scripts/bench_evaluation.py                 # both built-in models, 5 rounds of 16 items
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchlib import median_ratio, rotated

from austeer_gguf import datasets, models
from austeer_gguf.engine.decoder import forward, generate_tokens
from austeer_gguf.engine.hooked import SEQUENCES, HookedLlama
from austeer_gguf.evaluation.evaluate import prompt_renderer
from austeer_gguf.evaluation.scoring import answer_rows, answer_tokens
from austeer_gguf.evaluation.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3", help="built-in names or GGUF paths")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for model in args.models.split(","):
        bench_model(str(models.fetch(model)) if model in models.MODELS else model, args)


def bench_model(path: str, args: argparse.Namespace) -> None:
    llm = HookedLlama.for_evaluation(path, verbose=False, n_threads=args.threads, n_threads_batch=args.threads)
    render = prompt_renderer(llm, chat=True)
    detox = [render(item) for item in load_task("detox").dev[: args.items]]
    prompts = [llm.tokenize(text.encode("utf-8"), add_bos=True, special=True) for text in detox]
    replies = [llm.detokenize(tokens).decode("utf-8", errors="replace") or " ..."
               for tokens in generate_tokens(llm, prompts, max_tokens=args.max_tokens)]
    scored = [answer_tokens(llm, text, reply) for text, reply in zip(detox, replies)]
    neutral = [llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
               for text in datasets.prompts("neutral", "train")[:30]]
    choices = [answer_tokens(llm, item.prompt, choice) for item in load_task("word-polarity-question").dev[: args.items]
               for choice in item.choices]

    ways = {
        "generate": (len(prompts), lambda n: generate_tokens(llm, prompts, max_tokens=args.max_tokens,
                                                             max_sequences=n)),
        "score": (len(scored), lambda n: forward(llm, [t for t, _ in scored], [answer_rows(t, s) for t, s in scored],
                                                  max_sequences=n)),
        "kl": (1, lambda n: forward(llm, neutral, [range(len(t)) for t in neutral], max_sequences=n)),
        "choices": (len(choices) // 2, lambda n: forward(llm, [t for t, _ in choices],
                                                          [answer_rows(t, s) for t, s in choices],
                                                          max_sequences=n)),
    }
    seconds: dict[tuple[str, int], list[float]] = {(part, n): [] for part in ways for n in (1, SEQUENCES)}
    for _, run in ways.values():  # warm-up
        run(1)
        run(SEQUENCES)
    for round_index in range(args.rounds):
        for part, (count, run) in ways.items():
            for n in rotated([1, SEQUENCES], round_index):
                start = time.perf_counter()
                run(n)
                seconds[(part, n)].append((time.perf_counter() - start) / count)

    mean_prompt = statistics.mean(len(tokens) for tokens in prompts)
    print(f"\nmodel {path}: vocabulary {llm.n_vocab()}, {len(prompts)} detox dev items (prompts of {mean_prompt:.0f} "
          f"tokens), {args.rounds} rounds, {args.threads} threads; A: 1 sequence per decode, B: {SEQUENCES}")
    print(f"{'part':9} {'way A ms':>10} {'way B ms':>10} {'A / B':>7}")
    for part in ways:
        way_a, way_b = seconds[(part, 1)], seconds[(part, SEQUENCES)]
        ratio = median_ratio(way_a, way_b)
        print(f"{part:9} {1000 * statistics.median(way_a):10.1f} {1000 * statistics.median(way_b):10.1f} {ratio:7.2f}")
    llm.close()


if __name__ == "__main__":
    main()
