#!/usr/bin/env python3
"""The evidence: AUSteer vs baselines on the real GGUF models, tuned on dev, reported on test.

For each model and task: localize on the model's float32 copy (train split), sweep on dev with the quantized
file, measure the best setting of each method on test, and write reports/<model>/<task>.json; then
scripts/report.py turns them into reports/<model>.md with plots. Grids and --limit are kept small so that
the whole run fits in an hour on a 2-core CPU (see the printed timings).

    .venv/bin/python scripts/run_evidence.py                     # both models, all tasks
    .venv/bin/python scripts/run_evidence.py --models smollm2 --tasks word-polarity
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from austeer_gguf import SteeredLlama, models
from austeer_gguf.evaluation.sweep import SweepConfig, Sweeper
from austeer_gguf.evaluation.tasks import load_task

GRIDS = {
    "choice": SweepConfig(ks=(1, 5, 20, 100), alphas=(2.0, 5.0, 10.0), layer_alphas=(0.5, 2.0),
                          multipliers=(1.0, 2.0, 4.0), ranges=3, dev_limit=30, test_limit=120),
    "generation": SweepConfig(ks=(1, 10, 50), alphas=(2.0, 5.0), layer_alphas=(1.0,), multipliers=(0.25, 0.5, 1.0),
                              ranges=3, random_seeds=(0,), dev_limit=8, test_limit=24, max_tokens=20),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--tasks", default="word-polarity,sentiment,detox")
    parser.add_argument("--out", default="reports")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    for model in args.models.split(","):
        quantized, float_model = models.fetch(model), models.float_copy(model)
        llm = SteeredLlama(str(quantized), n_ctx=512, n_batch=512, logits_all=True, verbose=False,
                           n_threads=args.threads, n_threads_batch=args.threads)
        for task_name in args.tasks.split(","):
            task = load_task(task_name)
            config = GRIDS[task.kind]
            config.threads = args.threads
            report = Sweeper(llm, float_model, task, config).run(model)
            out = Path(args.out) / model
            out.mkdir(parents=True, exist_ok=True)
            report.to_json(out / f"{task_name}.json")
            print(f"{model} {task_name}: {report.seconds / 60:.1f} min ({len(report.trials)} dev trials)", flush=True)
            for method, trial in report.test.items():
                print(f"  {method:16} test score {trial.score:.3f}  KL {trial.kl:.3f}  {trial.setting.label()}")
        llm.close()
    print(f"total {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
