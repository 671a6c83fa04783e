#!/usr/bin/env python3
"""Evaluation cost: computing only the logits that are read, against every position's (logits_all), alternated.

A model opened with logits_all=True makes llama-cpp-python compute and copy the logits of every evaluated
position. The evaluation reads only some (austeer_gguf/evaluation/scoring.py): sampling reads the last
position's, scoring the rows from the answer on. Measured on the evidence run's own items, in rotating order
in every round (way A / way B):
  generate   16 greedy tokens of detox items (chat template and prefill): every position's logits / the last only
  score      log-likelihood of prompt + reply (perplexity, choice answers): every row / the rows from the answer
  decode8    8 positions after a prompt, last logits only: one llama_decode each / all 8 in one. Not built: it
             bounds what decoding 8 prompts together (one token each per llama_decode) could save.
Printed: median milliseconds per item (decode8: per position) of each way and the median of the per-round
ratios (A / B).

    .venv/bin/python scripts/bench_evaluation.py                 # both built-in models, 5 rounds of 12 items
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

from austeer_gguf import SteeredLlama, models
from austeer_gguf.evaluation.evaluate import Prompt, generate, prompt_renderer
from austeer_gguf.evaluation.scoring import answer_tokens, last_logits_only, logits_from
from austeer_gguf.evaluation.tasks import load_task


def time_generate(llm, tokens_per_prompt: list[list[int]], max_tokens: int, read_only: bool) -> float:
    start = time.perf_counter()
    for tokens in tokens_per_prompt:  # as the evaluation runs them: a shared chat prefix is reused
        with last_logits_only(llm) if read_only else contextlib.nullcontext():
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


def time_decode(llm, contexts: list[list[int]], tokens: list[list[int]], together: bool) -> float:
    elapsed = 0.0
    with last_logits_only(llm):
        for context, these in zip(contexts, tokens):
            llm.reset()
            llm.eval(context)
            start = time.perf_counter()
            if together:
                llm.eval(these)
            else:
                for token in these:
                    llm.eval([token])
            elapsed += time.perf_counter() - start
    return elapsed / sum(map(len, tokens))


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
            "score": lambda read_only: time_score(llm, sequences, read_only),
            "decode8": lambda together: time_decode(llm, prompts, [tokens[-8:] for tokens, _ in sequences], together)}
    seconds: dict[tuple[str, bool], list[float]] = {(part, r): [] for part in ways for r in (False, True)}
    for measure in ways.values():  # warm-up
        measure(False)
        measure(True)
    for round_index in range(args.rounds):
        order = [False, True] if round_index % 2 == 0 else [True, False]
        for part, measure in ways.items():
            for way_b in order:
                seconds[(part, way_b)].append(measure(way_b))

    mean_prompt = statistics.mean(len(tokens) for tokens in prompts)
    print(f"\nmodel {path}: vocabulary {llm.n_vocab()}, {len(items)} detox dev items (prompts of "
          f"{mean_prompt:.0f} tokens), {args.rounds} rounds, {args.threads} threads")
    print(f"{'part':9} {'way A ms':>10} {'way B ms':>10} {'A / B':>7}")
    for part in ways:
        way_a, way_b = seconds[(part, False)], seconds[(part, True)]
        ratio = statistics.median(a / b for a, b in zip(way_a, way_b))
        print(f"{part:9} {1000 * statistics.median(way_a):10.1f} {1000 * statistics.median(way_b):10.1f} {ratio:7.2f}")
    llm.close()

if __name__ == "__main__":
    main()
