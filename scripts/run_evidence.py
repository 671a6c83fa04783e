#!/usr/bin/env python3
"""The evidence: every method at matched side-effect budgets on the real GGUF models (see
austeer_gguf/evaluation/sweep.py for the design), then scripts/report.py for the tables and Pareto plots.

For each model and task: localize on the model's float32 copy (train split), screen and measure on dev with
the quantized file, measure each method's best setting within each budget once on test, and write
reports/evidence/<model>/<task>.json. Prints the time of each part.

    .venv/bin/python scripts/run_evidence.py                                  # both models, every task
    .venv/bin/python scripts/run_evidence.py --models smollm2 --tasks word-polarity-question
    .venv/bin/python scripts/run_evidence.py --quick --models tiny.gguf --float-model tiny.gguf   # every path
    .venv/bin/python scripts/run_evidence.py --methods first-run --out /tmp/evidence   # the first run's methods
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from austeer_gguf import models
from austeer_gguf.engine.hooked import HookedLlama
from austeer_gguf.evaluation.methods import METHODS
from austeer_gguf.evaluation.sweep import SweepConfig, Sweeper
from austeer_gguf.evaluation.tasks import load_task

TASKS = "word-polarity,word-polarity-question,sentiment,detox"
GRIDS = {
    "choice": SweepConfig(dev_limit=120, test_limit=440),
    # Generation costs ~10x a choice item: 4 dev trials per method (not 6) and 16-token texts (measured on 2
    # cores: word polarity 8 min per framing and model; sentiment 12 min on SmolLM2, 19 on Gemma-3; detox 29 on
    # SmolLM2).
    "generation": SweepConfig(dev_limit=40, test_limit=100, seeds=3, trials=4, max_tokens=16),
}
# The methods of the first whole run (110 min, reports of 2026-11-26): its grids, to time this code against it.
FIRST_RUN = "unsteered,austeer,single-unit,whole-layer,random-units,caa-layer,caa-range,prompting,prompting+austeer"
QUICK = dict(ks=(2, 5), alphas=(2.0, 8.0), layer_alphas=(0.5,), multipliers=(0.5, 4.0), caa_layer_step=2,
             trials=2, dev_limit=4, test_limit=4, seeds=1, max_tokens=4, neutral_texts=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3", help="built-in names or GGUF paths")
    parser.add_argument("--float-model", help="the float copy to localize on (default: a built-in's float32 copy)")
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--methods", default="all",
                        help="'all', 'first-run' (the first whole run's methods) or method names, comma-separated")
    parser.add_argument("--out", default="reports/evidence")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny limits: every code path in minutes")
    args = parser.parse_args()
    methods = chosen_methods(args.methods, parser)
    start = time.perf_counter()
    for model in args.models.split(","):
        quantized = models.fetch(model) if model in models.MODELS else Path(model)
        float_model = Path(args.float_model) if args.float_model else (
            models.float_copy(model) if model in models.MODELS else quantized)
        name = model if model in models.MODELS else quantized.stem
        llm = HookedLlama.for_evaluation(quantized, verbose=False, n_threads=args.threads, n_threads_batch=args.threads)
        for task_name in args.tasks.split(","):
            task = load_task(task_name)
            if args.quick:
                task = dataclasses.replace(task, train=task.train[:24])
            config = dataclasses.replace(GRIDS[task.kind], threads=args.threads, **(QUICK if args.quick else {}))
            clock = time.perf_counter()
            print(f"{name} / {task_name}:", flush=True)
            sweeper = Sweeper(llm, float_model, task, config, methods)
            report = sweeper.run(name, log=lambda line: print(line, flush=True))
            out = Path(args.out) / name
            out.mkdir(parents=True, exist_ok=True)
            report.to_json(out / f"{task_name}.json")
            parts = ", ".join(f"{part} {seconds / 60:.1f}" for part, seconds in report.seconds.items())
            print(f"{name} / {task_name}: {(time.perf_counter() - clock) / 60:.1f} min ({parts})", flush=True)
        llm.close()
    print(f"total {(time.perf_counter() - start) / 60:.1f} min")


def chosen_methods(names: str, parser: argparse.ArgumentParser) -> tuple:
    if names == "all":
        return METHODS
    wanted = (FIRST_RUN if names == "first-run" else names).split(",")
    known = {method.name: method for method in METHODS}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        parser.error(f"unknown methods {', '.join(unknown)}: use 'all', 'first-run' or some of {', '.join(known)}")
    return tuple(method for method in METHODS if method.name in wanted)


if __name__ == "__main__":
    main()
