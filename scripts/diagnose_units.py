#!/usr/bin/env python3
"""Why does scaling the selected units move a behaviour, or not? Statistics of a build's units on the prompts
it steers (issue 22, item 3), written to reports/units.md.

For each site, the top-100 units of a build's capture pass (its `.evidence.npz`) and 100 random units of the
same site, on the build's test prompts rendered as the build renders them, at every 4th position and the last
(the activation at position t is the last-token activation of the first t + 1 tokens: the model is causal):

- RMS / site: the unit's root mean square over those positions, over the median unit's of its site;
- near 0: the share of positions where |x| is under 10% of the median unit's RMS (scaling does little there);
- x > 0: the share of positions where the unit is positive. AUSteer's change is alpha * s * x, and the
  behaviour's direction is sign(s) (s > 0: the wanted text has it larger), so the change goes the wanted way
  exactly where x > 0, whatever the sign of s; where x < 0 it goes the other way.
- push: the mean of |s| * x over positions, over the median unit's RMS: the mean change along the wanted
  direction per unit of alpha (0: the pushes cancel);
- last-token x > 0: across prompts, at the last prompt position (where the reply starts).

Rows: the top-100 units by momentum at the last token (what AUSteer steers), 100 random units of the site, and
(when the capture pass pooled) the top-100 by position-pooled momentum, with how many units the two top-100s share.

Then the logit lens (`explain`) of the 5 strongest units of each site.

    .venv/bin/python scripts/build_detox.py                                   # writes the evidence files
    .venv/bin/python scripts/diagnose_units.py                                # both models' detox units
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from austeer_gguf import models
from austeer_gguf.evaluation.evaluate import prompt_renderer
from austeer_gguf.evaluation.explain import explain
from austeer_gguf.evaluation.methods import top_units
from austeer_gguf.evaluation.record import BuildRecord
from austeer_gguf.evaluation.tasks import load_task
from austeer_gguf.localization.capture import ActivationCapture
from austeer_gguf.profile import Profile

ROOT = Path(__file__).resolve().parents[1]
K, RANDOM_SEED, STRIDE, PROMPTS = 100, 0, 4, 40


def positions(tokens: list[int]) -> list[list[int]]:
    ends = sorted(set(range(STRIDE, len(tokens), STRIDE)) | {len(tokens)})
    return [tokens[:end] for end in ends]


def unit_stats(values: np.ndarray, last: np.ndarray, scores: np.ndarray, scale: float) -> dict[str, float]:
    """values: [positions, units]; last: [prompts, units]; scores: [units]."""
    return {"RMS / site": float(np.median(np.sqrt((values ** 2).mean(axis=0))) / scale),
            "near 0": float((np.abs(values) < 0.1 * scale).mean()),
            "x > 0": float((values > 0).mean()),
            "push": float((np.abs(scores) * values).mean() / scale),
            "last-token x > 0": float((last > 0).mean())}


def diagnose(name: str, evidence_path: Path, behaviour: str, threads: int) -> list[str]:
    model = models.fetch(name)
    task = load_task(behaviour)
    with ActivationCapture(model, n_threads=threads, batch_tokens=512, n_ctx=2048) as capture:
        evidence = BuildRecord.read_evidence(evidence_path, capture.shape)
        if evidence is None:
            raise SystemExit(f"{evidence_path} is not a capture pass of {name}: give its build's .evidence.npz")
        render = prompt_renderer(capture.llm, task.chat, task.frame)
        prompts = [capture.tokenize(render(prompt)) for prompt in task.split("test", PROMPTS)]
        sequences = [prefix for tokens in prompts for prefix in positions(tokens)]
        sites = list(evidence.counts.sites)
        everywhere = capture.last_tokens(sequences, sites)
        last = capture.last_tokens(prompts, sites)
    lines = [f"## {name} / {behaviour}", "",
             f"{len(prompts)} test prompts, {len(sequences)} positions; {evidence.counts.n_pairs} training pairs.", "",
             "| site | units | RMS / site | near 0 | x > 0 | push | last-token x > 0 |",
             "|---|---|---|---|---|---|---|"]
    rng = np.random.default_rng(RANDOM_SEED)
    lens = []
    for site in sites:
        flat = everywhere[site].reshape(len(sequences), -1)  # [positions, layers * width]
        width = evidence.counts.widths[site]
        scale = float(np.median(np.sqrt((flat ** 2).mean(axis=0))))
        scores = evidence.counts.scores(site).reshape(-1)
        chosen = top_units(evidence.counts, site, K)
        top = np.array([u.layer * width + u.dim for u in chosen])
        picked = {"top-100": (top, scores), "random 100": (rng.choice(flat.shape[1], size=K, replace=False), scores)}
        if evidence.pooled is not None:
            pooled = np.array([u.layer * width + u.dim for u in top_units(evidence.pooled, site, K)])
            shared = len(set(pooled.tolist()) & set(top.tolist()))
            picked[f"pooled top-100 ({shared} shared)"] = (pooled, evidence.pooled.scores(site).reshape(-1))
        for label, (index, signed) in picked.items():
            stats = unit_stats(flat[:, index], last[site].reshape(len(prompts), -1)[:, index], signed[index], scale)
            lines.append(f"| {site} | {label} | " + " | ".join(f"{value:.2f}" for value in stats.values()) + " |")
        explained = explain(model, Profile("top", 1.0, chosen[:5]), top=5)
        lens += [f"- {site} L{e.layer} d{e.dim} (s {e.score:+.2f}): promotes {', '.join(map(repr, e.promoted))}; "
                 f"suppresses {', '.join(map(repr, e.suppressed))}" for e in explained]
    return [*lines, "", "Logit lens of the 5 strongest units of each site:", "", *lens, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--behaviour", default="detox")
    parser.add_argument("--evidence", default=str(ROOT / "reports" / "detox" / "detox-{model}.evidence.npz"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "reports" / "units.md"))
    args = parser.parse_args()
    lines = ["# The selected units on the prompts they steer", "",
             "`.venv/bin/python scripts/diagnose_units.py` (definitions in its docstring).", ""]
    for name in args.models.split(","):
        lines += diagnose(name, Path(args.evidence.format(model=name)), args.behaviour, args.threads)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
