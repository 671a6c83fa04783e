#!/usr/bin/env python3
"""Will it steer? The reading `build` prints before generating anything (momentum of the top units against
chance, agreement of the pairs' directions), taken on every built-in model and task, beside what the evidence
run later measured on test at the tight budget (reports/evidence: AUSteer's score against unsteered, paired
95% interval). Each capture pass stops after --seconds (the first pairs, as `build` does).

    .venv/bin/python scripts/steerability.py            # both models, every task -> reports/steerability.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from austeer_gguf import models
from austeer_gguf.evaluation.build import BuildConfig, capture_evidence
from austeer_gguf.evaluation.tasks import load_task
from austeer_gguf.formats.model_file import ModelFile

ROOT = Path(__file__).resolve().parent.parent
TASKS = "word-polarity,word-polarity-question,sentiment,detox"


def measured(model: str, task: str) -> str:
    """AUSteer against unsteered on test at the tight budget, from the committed evidence."""
    path = ROOT / "reports" / "evidence" / model / f"{task}.json"
    if not path.is_file():
        return "not measured"
    report = json.loads(path.read_text())
    test = report["test"]["tight"]
    if "austeer" not in test:
        return "no AUSteer setting within the budget"
    low, high = report["comparisons"]["tight"]["unsteered"]["ci"]  # unsteered - austeer, signed score
    moved = "moved" if high < 0 else ("made worse" if low > 0 else "within noise")
    return (f"{moved}: {test['unsteered']['score']:.3f} -> {test['austeer']['score']:.3f} "
            f"(95% CI {-high:+.3f}..{-low:+.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--seconds", type=float, default=60.0, help="capture time per model and task")
    parser.add_argument("--output", type=Path, default=ROOT / "reports" / "steerability.md")
    args = parser.parse_args()
    sites = BuildConfig().sites
    rows = []
    for model in args.models.split(","):
        shape = ModelFile.open(models.resolve(model)).shape
        for name in args.tasks.split(","):
            evidence, seconds = capture_evidence(models.float_copy(model), load_task(name).train, sites, shape,
                                                 threads=2, seconds=args.seconds)
            reading = evidence.reading()
            rows.append(f"| {model} / {name} | {reading.pairs} | {reading.top_momentum:.3f} | "
                        f"{reading.chance_momentum:.3f} | {reading.units_beyond_chance} of {reading.units} | "
                        f"{reading.agreement:.2f} (layer {reading.agreement_layer}) | {measured(model, name)} |")
            print(rows[-1], f"({seconds:.0f} s)", flush=True)
    lines = ["# Will it steer? The capture pass's reading and what was measured later", "",
             f"`.venv/bin/python scripts/steerability.py` ({args.seconds:g} s of pairs per capture, 2 threads). "
             "Top-100 |s|: the mean sign agreement of the 100 strongest units; chance: what the largest of all "
             "units would reach if each pair's difference had a random sign; agreement: mean cosine between two "
             "pairs' residual-stream differences at its best layer. Measured: AUSteer's test score (higher is "
             "better) against unsteered at the tight budget, reports/evidence.", "",
             "| model / task | pairs | top-100 \\|s\\| | chance | units beyond chance | agreement | AUSteer on test |",
             "|---|---|---|---|---|---|---|", *rows]
    args.output.write_text("\n".join(lines) + "\n")
    print(args.output)


if __name__ == "__main__":
    main()
