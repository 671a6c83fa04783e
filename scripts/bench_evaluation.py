#!/usr/bin/env python3
"""Evaluation cost: one sequence per llama_decode against groups of them (austeer_gguf/engine/decoder.py).

The same calls the evidence run makes, on its own items, with way A (`max_sequences=1`: one sequence per
decode, as llama-cpp-python's own calls run), way B (the context's 16) and way C (`--wide`, default 64: a
context made for that many sequences), alternated in rotating order:
  generate   16 greedy tokens after each of the detox dev items (chat template and prefill)
  score      the rows that score prompt + reply (perplexity of a generation)
  kl         every position of the 30 neutral texts the KL screen reads
  choices    word-polarity-question dev items: prompt plus each answer
Printed: median milliseconds per item (kl: per screen) of each way and the medians of the per-round ratios A / B
and B / C (whether wider decodes would speed the evaluation up).

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
    parser.add_argument("--wide", type=int, default=64, help="sequences per decode of way C")
    args = parser.parse_args()
    for model in args.models.split(","):
        bench_model(str(models.fetch(model)) if model in models.MODELS else model, args)


def bench_model(path: str, args: argparse.Namespace) -> None:
    llm = HookedLlama.for_evaluation(path, verbose=False, n_threads=args.threads, n_threads_batch=args.threads)
    wide = HookedLlama.for_evaluation(path, verbose=False, n_threads=args.threads, n_threads_batch=args.threads,
                                      sequences=args.wide)
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

    def ways_on(model):
        return {
            "generate": (len(prompts), lambda n: generate_tokens(model, prompts, max_tokens=args.max_tokens,
                                                                 max_sequences=n)),
            "score": (len(scored), lambda n: forward(model, [t for t, _ in scored],
                                                      [answer_rows(t, s) for t, s in scored], max_sequences=n)),
            "kl": (1, lambda n: forward(model, neutral, [range(len(t)) for t in neutral], max_sequences=n)),
            "choices": (len(choices) // 2, lambda n: forward(model, [t for t, _ in choices],
                                                              [answer_rows(t, s) for t, s in choices],
                                                              max_sequences=n)),
        }

    narrow, wider = ways_on(llm), ways_on(wide)
    runs = {"A": lambda part: narrow[part][1](1), "B": lambda part: narrow[part][1](SEQUENCES),
            "C": lambda part: wider[part][1](args.wide)}
    seconds: dict[tuple[str, str], list[float]] = {(part, way): [] for part in narrow for way in runs}
    for part in narrow:  # warm-up
        for run in runs.values():
            run(part)
    for round_index in range(args.rounds):
        for part, (count, _) in narrow.items():
            for way in rotated(list(runs), round_index):
                start = time.perf_counter()
                runs[way](part)
                seconds[(part, way)].append((time.perf_counter() - start) / count)

    mean_prompt = statistics.mean(len(tokens) for tokens in prompts)
    print(f"\nmodel {path}: vocabulary {llm.n_vocab()}, {len(prompts)} detox dev items (prompts of {mean_prompt:.0f} "
          f"tokens), {args.rounds} rounds, {args.threads} threads; A: 1 sequence per decode, B: {SEQUENCES}, "
          f"C: {args.wide}")
    print(f"{'part':9} {'way A ms':>10} {'way B ms':>10} {'way C ms':>10} {'A / B':>7} {'B / C':>7}")
    for part in narrow:
        way_a, way_b, way_c = (seconds[(part, way)] for way in runs)
        print(f"{part:9} {1000 * statistics.median(way_a):10.1f} {1000 * statistics.median(way_b):10.1f} "
              f"{1000 * statistics.median(way_c):10.1f} {median_ratio(way_a, way_b):7.2f} "
              f"{median_ratio(way_b, way_c):7.2f}")
    wide.close()
    llm.close()


if __name__ == "__main__":
    main()
