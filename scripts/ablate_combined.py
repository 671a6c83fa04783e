#!/usr/bin/env python3
"""Which part of a chosen AU + CAA setting does the work? A diagnostic, after the evidence run has chosen on dev:
the `austeer+caa` setting an evidence report chose under a budget, measured on test again as its two parts
alone (its units without the control vector; its control vector without the units), on the same items and
seeds as the evidence run, each compared with the whole setting by a paired bootstrap 95% interval. Nothing
here is chosen on test: the parts are fixed by the setting dev chose.

    .venv/bin/python scripts/ablate_combined.py --model gemma3 --task detox --budget loose
    # -> reports/evidence/<model>/<task>-ablation.json and a printed table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from austeer_gguf import SteeringSetting, models
from austeer_gguf.engine.hooked import HookedLlama
from austeer_gguf.evaluation import metrics
from austeer_gguf.evaluation.build import capture_evidence
from austeer_gguf.evaluation.methods import METHODS, Point
from austeer_gguf.evaluation.sweep import compare, report_json_value
from austeer_gguf.evaluation.tasks import load_task
from austeer_gguf.ggufio.atomic import atomic_write_text

METHOD = "austeer+caa"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3", help="a built-in model with an evidence report")
    parser.add_argument("--task", default="detox")
    parser.add_argument("--budget", default="loose")
    parser.add_argument("--evidence", default="reports/evidence")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    report = json.loads((Path(args.evidence) / args.model / f"{args.task}.json").read_text())
    config = report["config"]
    chosen = report["chosen"][args.budget].get(METHOD)
    if chosen is None:
        raise SystemExit(f"the {args.budget} budget chose no {METHOD} setting in this report")
    fields = dict(chosen["setting"], layers=tuple(chosen["setting"]["layers"] or ()) or None)
    point = Point(**fields)

    task = load_task(args.task)
    llm = HookedLlama.for_evaluation(models.fetch(args.model), verbose=False, n_threads=args.threads,
                                     n_threads_batch=args.threads)
    evidence, _ = capture_evidence(models.float_copy(args.model), task.train, tuple(config["sites"]), llm.shape,
                                   threads=args.threads)
    method = next(method for method in METHODS if method.name == METHOD)
    profile = method.profile(point, evidence)  # its units (times alpha) and its control vector
    parts = {METHOD: profile, "its units alone": dataclasses.replace(profile, control=None),
             "its control vector alone": dataclasses.replace(profile, units=())}
    results = {}
    for name, part in parts.items():
        setting = SteeringSetting.make(evidence.shape, profiles=[(part, 1.0)], scope=method.scope)
        results[name] = task.measure_test(llm, setting, prompted=False, limit=config["test_limit"],
                                          seeds=config["seeds"], temperature=config["temperature"],
                                          max_tokens=config["max_tokens"])
    llm.close()
    comparisons = compare(task, results, METHOD)
    out = Path(args.evidence) / args.model / f"{args.task}-ablation.json"
    written = {"model": args.model, "task": args.task, "budget": args.budget, "setting": chosen["setting"],
               "evidence_score": report["test"][args.budget][METHOD]["score"], "test": results,
               "comparisons": comparisons}
    atomic_write_text(out, json.dumps(written, indent=1, default=report_json_value) + "\n")
    behaviour = metrics.BEHAVIOURS[task.behaviour]
    print(f"{args.model} / {args.task}, {METHOD} as chosen under the {args.budget} budget ({point.label()}):")
    print(f"  the evidence run measured {report['test'][args.budget][METHOD]['score']:.3f} (score)")
    for name, result in results.items():
        line = f"  {name:26} {behaviour} {result[task.behaviour]:.3f}, perplexity {result['perplexity']:.2f}"
        if name in comparisons:
            c = comparisons[name]
            line += f"; whole - part {-c['difference']:+.3f} (95% CI {-c['ci'][1]:+.3f}..{-c['ci'][0]:+.3f})"
        print(line)
    print(f"written {out}")


if __name__ == "__main__":
    main()
