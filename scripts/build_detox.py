#!/usr/bin/env python3
"""The detox profile of each built-in model, and the measurement behind it (austeer_gguf/evaluation/build.py
does the work; its docstring gives the recipe and the rules).

For each model: one capture pass over the 2,592 chat-format polite/rude pairs (polite-chat train) on the
model's float32 copy; on the quantized file, every build method (AUSteer top-100 units of each site, CAA on
every layer, asking the model, asking + the best AUSteer trial) at KL-calibrated strengths 0.025 .. 0.4 on the
90 dev items; each method's dev choice measured once on the 210 test items with paired 95% intervals; the
shipping rule's winner written to python/austeer_gguf/data/profiles/detox-<model>.json, the report to
reports/detox/<model>.json.

    .venv/bin/python scripts/build_detox.py              # both models
    .venv/bin/python scripts/build_detox.py --models smollm2 --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from austeer_gguf import models
from austeer_gguf.engine.hooked import HookedLlama
from austeer_gguf.evaluation.build import BuildConfig, build
from austeer_gguf.evaluation.tasks import load_task
from austeer_gguf.formats.model_file import ModelFile
from austeer_gguf.formats.profiles import write_profile

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "python" / "austeer_gguf" / "data" / "profiles"


def ship(name: str, result, out: Path) -> str | None:
    """Write the winner's profile as the detox profile of `name`; its path relative to the repository."""
    if result.winner is None:
        return None
    profile = result.profiles[result.winner]
    chosen = result.chosen[result.winner]
    profile = dataclasses.replace(profile, name="detox", model=ModelFile.open(models.fetch(name)).fingerprint, extra={
        **profile.extra, "method": result.winner, "setting": chosen["setting"], "task": "detox",
        "meets_target": result.comparisons[result.winner]["meets_target"], "report": str(out.relative_to(ROOT))})
    path = write_profile(profile, PROFILES / f"detox-{name}.json")
    return str(path.relative_to(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--pairs", type=int, default=0, help="first N training pairs (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "reports" / "detox"))
    parser.add_argument("--quick", action="store_true", help="tiny limits: exercises every step (ships nothing)")
    args = parser.parse_args()
    config = BuildConfig(threads=args.threads, pairs=args.pairs or None)
    if args.quick:
        config = dataclasses.replace(config, kl_budgets=(0.05, 0.4), dev_limit=6, test_limit=6, pairs=args.pairs or 40)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = load_task("detox")
    for name in args.models.split(","):
        llm = HookedLlama.for_evaluation(models.fetch(name), verbose=False, n_threads=args.threads,
                                         n_threads_batch=args.threads)
        result = build(llm, models.float_copy(name), task, config, name=name,
                       log=lambda line: print(line, flush=True))
        llm.close()
        out = out_dir / f"{name}.json"
        report = {**result.to_dict(), "config": dataclasses.asdict(config)}
        report["profile"] = None if args.quick else ship(name, result, out)
        out.write_text(json.dumps(report, indent=1, default=float) + "\n")
        print(f"{name}: {result.seconds / 60:.1f} min; winner {result.winner}", flush=True)
        for method, comparison in result.comparisons.items():
            low, high = comparison["relative_improvement_ci"]
            print(f"  {method:18} {task.behaviour} {comparison[task.behaviour]:.3f} (unsteered "
                  f"{comparison['unsteered']:.3f}; improvement {comparison['relative_improvement']:.2f}, 95% CI "
                  f"{low:.2f}..{high:.2f}); ppl x{comparison['perplexity_ratio']:.2f}; harmless refusals "
                  f"{comparison['harmless_refusals']:.3f} vs {comparison['harmless_refusals_unsteered']:.3f}; "
                  f"target met: {comparison['meets_target']}")


if __name__ == "__main__":
    main()
