#!/usr/bin/env python3
"""Evaluation cost: computing only the logits that are read, against every position's (logits_all), alternated.

A model opened with logits_all=True makes llama-cpp-python compute and copy the logits of every evaluated
position. The evaluation reads only some (austeer_gguf/evaluation/scoring.py): sampling reads the last
position's, scoring the rows from the answer on. Measured on the evidence run's own items, in rotating order
in every round:
  generate   16 greedy tokens of detox items (chat template and prefill): every position's logits / the last only
  score      log-likelihood of prompt + reply (perplexity, choice answers): every row / the rows from the answer
Printed: median milliseconds per item of each way and the median of the per-round ratios (all / read only).

    .venv/bin/python scripts/bench_evaluation.py                 # both built-in models, 5 rounds of 12 items
"""

from __future__ import annotations

import argparse
import statistics
import time

from austeer_gguf import SteeredLlama, models
from austeer_gguf.evaluation.evaluate import Prompt, generate, prompt_renderer
from austeer_gguf.evaluation.scoring import answer_tokens, last_logits_only, logits_from
from austeer_gguf.evaluation.tasks import load_task


def time_generate(llm, tokens_per_prompt: list[list[int]], max_tokens: int, read_only: bool) -> float:
    start = time.perf_counter()
    for tokens in tokens_per_prompt:  # as the evaluation runs them: a shared chat prefix is reused
        if read_only:
            with last_logits_only(llm):
                _take(llm.generate(tokens, temp=0.0), max_tokens)
        else:
            _take(llm.generate(tokens, temp=0.0), max_tokens)
    return (time.perf_counter() - start) / len(tokens_per_prompt)


def _take(tokens, count: int) -> None:
    for index, _ in enumerate(tokens):
        if index + 1 == count:
            break


def time_score(llm, sequences: list[tuple[list[int], int]], read_only: bool) -> float:
    start = time.perf_counter()
    for tokens, answer_start in sequences:
        if read_only:
            logits_from(llm, tokens, answer_start - 1)
        else:
            llm.reset()
            llm.eval(tokens)
    return (time.perf_counter() - start) / len(sequences)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3", help="built-in names or GGUF paths")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    task = load_task("detox")
    for model in args.models.split(","):
        bench_model(str(models.fetch(model)) if model in models.MODELS else model, task.dev[: args.items], args)


def bench_model(path: str, items: list[Prompt], args: argparse.Namespace) -> None:
    llm = SteeredLlama(path, n_ctx=512, n_batch=512, logits_all=True, verbose=False,
                       n_threads=args.threads, n_threads_batch=args.threads)
    render = prompt_renderer(llm, chat=True)
    prompts = [llm.tokenize(render(item).encode("utf-8"), add_bos=True, special=True) for item in items]
    replies = generate(llm, items, chat=True, max_tokens=args.max_tokens)
    sequences = [answer_tokens(llm, render(item), reply or " ...") for item, reply in zip(items, replies)]

    ways = {"generate": lambda read_only: time_generate(llm, prompts, args.max_tokens, read_only),
            "score": lambda read_only: time_score(llm, sequences, read_only)}
    seconds: dict[tuple[str, bool], list[float]] = {(part, r): [] for part in ways for r in (False, True)}
    for measure in ways.values():  # warm-up
        measure(False)
        measure(True)
    for round_index in range(args.rounds):
        order = [False, True] if round_index % 2 == 0 else [True, False]
        for part, measure in ways.items():
            for read_only in order:
                seconds[(part, read_only)].append(measure(read_only))

    mean_prompt = statistics.mean(len(tokens) for tokens in prompts)
    print(f"\nmodel {path}: vocabulary {llm.n_vocab()}, {len(items)} detox dev items (prompts of "
          f"{mean_prompt:.0f} tokens), {args.rounds} rounds, {args.threads} threads")
    print(f"{'part':9} {'all logits ms':>14} {'read only ms':>13} {'all / read only':>16}")
    for part in ways:
        every, read = seconds[(part, False)], seconds[(part, True)]
        ratio = statistics.median(a / b for a, b in zip(every, read))
        print(f"{part:9} {1000 * statistics.median(every):14.1f} {1000 * statistics.median(read):13.1f} "
              f"{ratio:16.2f}")
    llm.close()

if __name__ == "__main__":
    main()
