"""Sweeps on dev, reports on test: AUSteer against block-level and control baselines, tuned the same way.

Methods (each tuned on the dev split by the task's dev score, then measured once on test):
  austeer      top-k units of one site (k in ks, alpha in alphas, site in sites)
  single-unit  the best unit alone (k = 1)
  whole-layer  every dim of one layer at one site scaled by the momentum rule (the layer with the largest
               summed |score|; alpha in layer_alphas)
  random-units k random units of the best AUSteer site with their own momentum scores, at the best AUSteer
               k and alpha (a control: does the selection matter?)
  caa          the CAA control vector on a layer range, times a multiplier
Dev scores are the task's own (`Task.score`: balanced accuracy for choice tasks; the behaviour metric among
fluent settings for generation tasks, see `GenerationTask`). A method with no admissible setting is reported
with its most fluent setting, marked inadmissible. One capture pass over the train pairs gives the momentum
counts of every site and the CAA mean difference together.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import datasets
from ..control_vector import ControlVector
from ..localization.capture import PairCapture
from ..localization.reducers import MeanDifference, MomentumCounts, rank_units
from ..profile import Profile, Unit
from .evaluate import ChoiceResult, GenerationResult, kl_on_neutral
from .tasks import Task


@dataclass
class Setting:
    method: str
    site: str | None = None
    k: int | None = None
    alpha: float | None = None
    layer: int | None = None
    layers: tuple[int, int] | None = None
    multiplier: float | None = None
    seed: int | None = None

    def label(self) -> str:
        parts = [self.method]
        for name in ("site", "k", "alpha", "layer", "layers", "multiplier", "seed"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value}")
        return " ".join(parts)


@dataclass
class Trial:
    setting: Setting
    split: str
    score: float
    result: dict
    kl: float | None = None
    admissible: bool = True  # within the fluency bounds on dev (generation tasks)


@dataclass
class SweepConfig:
    sites: tuple[str, ...] = ("attn", "ffn", "layer")
    ks: tuple[int, ...] = (1, 5, 20, 100)
    alphas: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0)
    layer_alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0)
    multipliers: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    random_seeds: tuple[int, ...] = (0, 1, 2)
    ranges: int = 4  # CAA layer ranges tried: all layers, then the middle, first and last thirds
    dev_limit: int | None = None
    test_limit: int | None = None
    max_tokens: int = 32
    fluency_factor: float = 2.0
    threads: int | None = None


@dataclass
class SweepReport:
    model: str
    task: str
    task_kind: str
    provenance: str
    config: dict
    trials: list[Trial] = field(default_factory=list)
    best: dict[str, Trial] = field(default_factory=dict)
    test: dict[str, Trial] = field(default_factory=dict)
    units: dict[str, list[dict]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, default=_plain) + "\n")


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__}")


class Sweeper:
    def __init__(self, llm, float_model: str | Path, task: Task, config: SweepConfig) -> None:
        self.llm = llm
        self.float_model = Path(float_model)
        self.task = task
        self.config = config
        self.counts: MomentumCounts | None = None
        self.control: ControlVector | None = None
        self.baseline_dev: ChoiceResult | GenerationResult | None = None

    # ---- measuring one setting ------------------------------------------------------------------------

    def measure(self, setting: Setting, split: str) -> Trial:
        return self._scored(setting, split, self._evaluate(setting, split))

    def _evaluate(self, setting: Setting, split: str) -> ChoiceResult | GenerationResult:
        self._apply(setting)
        limit = self.config.dev_limit if split == "dev" else self.config.test_limit
        return self.task.evaluate(self.llm, split, limit=limit, max_tokens=self.config.max_tokens)

    def _scored(self, setting: Setting, split: str, result: ChoiceResult | GenerationResult) -> Trial:
        baseline = self.baseline_dev if split == "dev" else None
        score = self.task.score(result, baseline, fluency_factor=self.config.fluency_factor)
        data = result.to_dict()
        data.pop("predictions", None)
        return Trial(setting, split, float(score), data)

    def _apply(self, setting: Setting) -> None:
        steering = self.llm.steering
        steering.set_control_vector(None)
        steering.set_profile(None)
        steering.strength = 1.0
        steering.enable()
        if setting.method == "unsteered":
            return
        if setting.method == "caa":
            assert self.control is not None and setting.layers is not None
            steering.set_control_vector(self.control.restricted(*setting.layers), setting.multiplier or 1.0)
            return
        steering.set_profile(self._profile(setting))

    def _localize_all(self) -> None:
        """One capture pass over the train pairs: momentum counts of every site and the CAA mean difference."""
        captured = tuple(dict.fromkeys([*self.config.sites, "layer"]))
        with PairCapture(self.float_model, self.task.train, captured, n_threads=self.config.threads,
                         progress=False) as capture:
            self.counts = MomentumCounts.for_shape(capture.shape, self.config.sites)
            difference = MeanDifference.for_shape(capture.shape, "layer")
            capture.feed(self.counts, difference)
        self.control = difference.control_vector(capture.shape.architecture)

    def _profile(self, setting: Setting) -> Profile:
        counts = self.counts
        assert counts is not None
        if setting.method in ("austeer", "single-unit"):
            units = [Unit(u.layer, u.site, u.dim, u.score) for u in rank_units(counts.only(setting.site), setting.k)]
            return Profile(setting.method, setting.alpha, units)
        scores = counts.scores(setting.site)
        if setting.method == "whole-layer":
            units = [Unit(setting.layer, setting.site, dim, float(scores[setting.layer, dim]))
                     for dim in range(scores.shape[1])]
        else:  # random-units
            rng = np.random.default_rng(setting.seed)
            flat = rng.choice(scores.size, size=setting.k, replace=False)
            units = [Unit(int(i // scores.shape[1]), setting.site, int(i % scores.shape[1]),
                          float(scores.flat[i])) for i in flat]
        return Profile(setting.method, setting.alpha, units)

    # ---- the sweep -----------------------------------------------------------------------------------

    def run(self, model_name: str) -> SweepReport:
        start = time.perf_counter()
        config = self.config
        report = SweepReport(model_name, self.task.name, self.task.kind, self.task.provenance, asdict(config))
        self._localize_all()
        for site in config.sites:
            report.units[site] = [asdict(u) for u in rank_units(self.counts.only(site), 100)]

        unsteered = Setting("unsteered")
        baseline_result = self._evaluate(unsteered, "dev")
        baseline = self._scored(unsteered, "dev", baseline_result)  # scored before it becomes the baseline
        self.baseline_dev = baseline_result
        report.trials.append(baseline)

        def best_of(trials: Sequence[Trial]) -> Trial:
            """The best admissible trial; when none is, the most fluent one, marked inadmissible."""
            best = max(trials, key=lambda t: t.score)
            if best.score == -math.inf:
                best = min(trials, key=lambda t: t.result.get("perplexity", math.inf))
                best.admissible = False
            return best

        austeer = [self._trial(report, Setting("austeer", site, k, alpha))
                   for site in config.sites for k in config.ks if k > 1 for alpha in config.alphas]
        single = [self._trial(report, Setting("single-unit", site, 1, alpha))
                  for site in config.sites for alpha in config.alphas]
        best_austeer = best_of(austeer)
        whole = []
        for site in config.sites:
            layer = int(np.argmax(self.counts.layer_strength(site)))
            whole += [self._trial(report, Setting("whole-layer", site, None, alpha, layer=layer))
                      for alpha in config.layer_alphas]
        chosen = best_austeer.setting
        random_trials = [self._trial(report, Setting("random-units", chosen.site, chosen.k, chosen.alpha, seed=seed))
                         for seed in config.random_seeds]
        n_layers = self.counts.n_layers
        third = max(1, n_layers // 3)
        ranges = [(1, n_layers - 1), (third, 2 * third), (1, third), (2 * third, n_layers - 1)][: config.ranges]
        caa = [self._trial(report, Setting("caa", layers=r, multiplier=m))
               for r in ranges for m in config.multipliers]

        report.best = {"unsteered": baseline, "austeer": best_austeer, "single-unit": best_of(single),
                       "whole-layer": best_of(whole), "caa": best_of(caa)}
        neutral = self._neutral_texts()
        for method, trial in report.best.items():
            test = self.measure(trial.setting, "test")
            test.admissible = trial.admissible
            test.kl = kl_on_neutral(self.llm, neutral) if method != "unsteered" else 0.0
            report.test[method] = test
        for index, trial in enumerate(random_trials):
            test = self.measure(trial.setting, "test")
            test.kl = kl_on_neutral(self.llm, neutral)
            report.test[f"random-units-{index}"] = test
        self._apply(Setting("unsteered"))
        report.seconds = time.perf_counter() - start
        return report

    def _trial(self, report: SweepReport, setting: Setting) -> Trial:
        trial = self.measure(setting, "dev")
        report.trials.append(trial)
        return trial

    @staticmethod
    def _neutral_texts() -> list[str]:
        return datasets.prompts("neutral", "train")[:10]
