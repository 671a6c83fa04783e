"""Matched-cost evidence: does AUSteer beat block-level steering and prompting at the same side-effect budget?

For one model and one task:
1. One capture pass over the task's train pairs (>= 1,000) on the float model gives the momentum counts of
   every site and the CAA mean difference of the residual stream.
2. Every method (`methods.METHODS`: AUSteer, AUSteer on generated tokens only (generation tasks), additive
   units, AUSteer + CAA, a single unit, a whole layer, random units, CAA on one layer and on layer ranges,
   asking the model, asking + AUSteer) has a strength axis that runs from no effect to breakage.
   Every setting on the axis is screened by its side effect on neutral text (KL(steered || unsteered) of
   next-token distributions, cheap). From the settings within `screen_kl`, `trials` spread evenly by KL are
   measured on dev: the task's score and the perplexity ratio of greedy neutral continuations (generations
   under steering scored by the unsteered model, over the unsteered continuations). Every method gets the same
   number of dev trials (prompting, which has no axis, one); the counts are reported.
3. Budgets: a setting is within a budget when both its KL and its perplexity ratio are (tight: KL <= 0.1 and
   perplexity <= 1.1x; loose: 0.3 and 1.3x) and, on generation tasks, its dev texts keep at least 0.8x the
   unsteered distinct bigrams (a loop has a low perplexity: it passes the other two). For each budget, each
   method's best dev setting within it is measured once on test, per item (generation tasks: `seeds` sampled
   runs; harmless refusals on the first), and compared with AUSteer's by a paired bootstrap 95% interval of
   the difference; an interval that contains 0 is within noise. Holm's correction over a budget's comparisons
   says which differences also hold family-wise (`compare`).
Settings are chosen on dev only; test is touched once per (method, budget).
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
from . import metrics
from .budgets import BUDGETS, Budget
from .build import capture_evidence
from .calibrate import PerplexityRatio
from .evaluate import NeutralKL
from .methods import METHODS, AxisConfig, Evidence, Method, Point, ordered, reference_of
from .tasks import Task


@dataclass
class Trial:
    setting: Point
    kl: float
    perplexity_ratio: float | None = None
    score: float | None = None  # the task's dev score (None: screened only)
    distinct2_ratio: float | None = None  # generation tasks: distinct bigrams of the dev texts over unsteered's
    result: dict | None = None

    def within(self, budget: Budget) -> bool:
        return (self.score is not None and self.kl <= budget.kl and self.perplexity_ratio is not None
                and self.perplexity_ratio <= budget.perplexity
                and (self.distinct2_ratio is None or self.distinct2_ratio >= budget.distinct2))


@dataclass
class SweepConfig(AxisConfig):
    trials: int = 6  # dev trials per method
    screen_kl: float = 0.6  # settings screened beyond this KL are not measured on dev
    dev_limit: int | None = None
    test_limit: int | None = None
    seeds: int = 3  # sampled test runs of generation tasks (temperature `temperature`)
    temperature: float = 0.7
    max_tokens: int = 24
    neutral_texts: int = 30
    threads: int | None = None
    budgets: tuple[Budget, ...] = BUDGETS


@dataclass
class SweepReport:
    model: str
    task: str
    task_kind: str
    provenance: str
    config: dict
    headline: dict = field(default_factory=dict)  # the task's headline figure: key and name
    methods: list[dict] = field(default_factory=list)  # every method measured, in the order reports show them
    n_pairs: int = 0
    trials: list[Trial] = field(default_factory=list)  # every screened setting, dev-measured ones with a score
    chosen: dict[str, dict[str, Trial]] = field(default_factory=dict)  # budget -> method -> dev trial
    test: dict[str, dict[str, dict]] = field(default_factory=dict)  # budget -> method -> test result
    comparisons: dict[str, dict[str, dict]] = field(default_factory=dict)  # budget -> method -> vs the reference
    trial_counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, default=report_json_value) + "\n")


def report_json_value(value):
    """How a report writes NumPy numbers and non-finite floats in JSON (`json.dumps(..., default=)`)."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


class Sweeper:
    """One model and one task: `run` localizes on `float_model`, then measures every method on `llm` (the
    quantized file users run, a `HookedLlama`)."""

    def __init__(self, llm, float_model: str | Path, task: Task, config: SweepConfig,
                 methods: Sequence[Method] = METHODS) -> None:
        self.llm = llm
        self.float_model = Path(float_model)
        self.task = task
        self.config = config
        if task.kind != "generation":  # a choice is scored on prompt positions only: generated tokens never come
            methods = [method for method in methods if method.scope == "all"]
        self.shown = list(methods)  # in the order reports show them
        self.methods = ordered(methods)  # in the order they are measured
        self.reference = reference_of(methods)
        self.evidence: Evidence | None = None
        self._by_name = {method.name: method for method in methods}
        self._kl: NeutralKL | None = None  # side effects, made once the model's unsteered outputs are known
        self._fluency: PerplexityRatio | None = None
        self._baseline_distinct2: float | None = None
        self._tested: dict[Point, dict] = {}

    # ---- measuring ------------------------------------------------------------------------------------

    def _evaluate(self, point: Point, split: str, **options):
        limit = self.config.dev_limit if split == "dev" else self.config.test_limit
        return self.task.evaluate(self.llm, split, setting=self._setting(point), limit=limit,
                                  max_tokens=self.config.max_tokens, prompted=point.prompted, **options)

    def _setting(self, point: Point):
        return self._by_name[point.method].setting(point, self.evidence)

    def _screen(self, points: list[Point]) -> list[Trial]:
        """Each point's KL on neutral text (`NeutralKL.many`)."""
        settings = [self._setting(point) for point in points]
        active = [index for index, setting in enumerate(settings) if setting.active]
        kl = dict(zip(active, self._kl.many([settings[index] for index in active])))
        return [Trial(point, kl.get(index, 0.0)) for index, point in enumerate(points)]

    def _measure(self, trials: list[Trial]) -> list[Trial]:
        """Each trial's dev score and perplexity ratio. On a generation task the trials that ask the model alike
        are measured together, several settings in one decode (a choice task scores one setting at a time)."""
        generation = self.task.kind == "generation"
        groups = ([[t for t in trials if t.setting.prompted == prompted] for prompted in (False, True)]
                  if generation else [[t] for t in trials])
        for group in filter(None, groups):
            settings = [self._setting(t.setting) for t in group]
            if generation:
                results = self.task.evaluate_settings(self.llm, "dev", settings, limit=self.config.dev_limit,
                                                      max_tokens=self.config.max_tokens,
                                                      prompted=group[0].setting.prompted)
            else:
                results = [self._evaluate(group[0].setting, "dev")]
            active = [i for i, setting in enumerate(settings) if setting.active]
            ratios = dict(zip(active, self._fluency.many([settings[i] for i in active]) if active else []))
            for i, (trial, result) in enumerate(zip(group, results)):
                self._record(trial, result, ratios.get(i, 1.0))
        return trials

    def _record(self, trial: Trial, result, perplexity_ratio: float) -> None:
        trial.perplexity_ratio = perplexity_ratio
        trial.score = float(self.task.score(result))
        distinct2 = getattr(result, "distinct2", None)
        if distinct2 is not None:
            if self._baseline_distinct2 is None:  # the first measurement is the unsteered one
                self._baseline_distinct2 = distinct2
            base = self._baseline_distinct2
            trial.distinct2_ratio = distinct2 / base if base > 0 else 1.0
        data = result.to_dict()
        for key in ("predictions", "items", "labels", "margins"):
            data.pop(key, None)
        trial.result = data

    def _pick(self, screened: list[Trial]) -> list[Trial]:
        """`trials` settings: spread evenly by KL among those within the screen (weakest and strongest kept),
        and the first ones beyond it (where the axis breaks: at least one, more when too few are within)."""
        ordered_trials = sorted(screened, key=lambda t: t.kl)
        inside = [t for t in ordered_trials if t.kl <= self.config.screen_kl]
        beyond = [t for t in ordered_trials if t.kl > self.config.screen_kl]
        n = min(self.config.trials, len(ordered_trials))
        n_beyond = min(len(beyond), max(1 if beyond else 0, n - len(inside)))
        n_inside = n - n_beyond
        spread = np.linspace(0, len(inside) - 1, n_inside) if n_inside else []
        return [inside[i] for i in sorted({round(x) for x in spread})] + beyond[:n_beyond]

    # ---- the sweep -----------------------------------------------------------------------------------

    def run(self, model_name: str, log=print) -> SweepReport:
        config, task = self.config, self.task
        report = SweepReport(model_name, task.name, task.kind, task.provenance, asdict(config), task.headline,
                             [method.describe() for method in self.shown])
        clock = time.perf_counter()
        self._localize()
        report.n_pairs = self.evidence.counts.n_pairs
        report.seconds["localize"] = time.perf_counter() - clock
        clock = time.perf_counter()
        self._kl = NeutralKL(self.llm, datasets.prompts("neutral", "train")[: config.neutral_texts])
        self._fluency = PerplexityRatio(self.llm, datasets.prompts("neutral", "dev")[:12], max_tokens=16)

        baselines = []
        for method in self.methods:
            axis = method.axis(self.evidence, config)
            if not axis:  # a method the sweep cannot measure (a conditional one: the build measures it)
                continue
            if method.baseline:
                baselines += self._measure([Trial(point, 0.0) for point in axis])
                report.trials += baselines
                continue
            screened = self._screen(axis)
            measured = self._measure(self._pick(screened))
            report.trials += screened
            report.trial_counts[method.name] = len(measured)
            if method.reference:
                fine = [t for t in measured if t.within(config.budgets[-1])] or measured
                self.evidence.best = max(fine, key=lambda t: t.score).setting
            log(f"  {method.name:18} {len(screened):3d} screened, {len(measured)} measured on dev; best "
                f"{max((t.score for t in measured), default=float('nan')):.3f}")
        report.seconds["dev"] = time.perf_counter() - clock

        clock = time.perf_counter()
        for budget in config.budgets:
            chosen = {trial.setting.method: trial for trial in baselines}
            for method in self.methods:
                fine = [t for t in report.trials if t.setting.method == method.name and t.within(budget)]
                if fine and not method.baseline:
                    chosen[method.name] = max(fine, key=lambda t: t.score)
            report.chosen[budget.name] = chosen
            report.test[budget.name] = {method: self._test(trial.setting) for method, trial in chosen.items()}
            for method, result in report.test[budget.name].items():
                log(f"  test {budget.name:5} {method:18} {result['score']:.3f}  ({chosen[method].setting.label()})")
            report.comparisons[budget.name] = compare(self.task, report.test[budget.name], self.reference.name)
        report.seconds["test"] = time.perf_counter() - clock
        return report

    def _localize(self) -> None:
        """One capture pass over the train pairs: momentum counts of every site and the CAA mean difference."""
        self.evidence, _ = capture_evidence(self.float_model, self.task.train, self.config.sites, self.llm.shape,
                                            threads=self.config.threads)

    def _test(self, point: Point) -> dict:
        """The test result of a point, measured once however many budgets choose it."""
        if point not in self._tested:
            config = self.config
            self._tested[point] = self.task.measure_test(self.llm, self._setting(point), prompted=point.prompted,
                                                         limit=config.test_limit, seeds=config.seeds,
                                                         temperature=config.temperature, max_tokens=config.max_tokens)
        return self._tested[point]


def compare(task: Task, results: dict[str, dict], reference: str) -> dict[str, dict]:
    """Each method against the reference method on the same test items: the difference of the task statistic,
    a paired bootstrap 95% interval (`within_noise` when it contains 0), its p-value, and whether the difference
    holds after Holm's correction over the budget's comparisons (`holm`, family-wise 5%)."""
    if reference not in results:
        return {}
    out = {}
    for method, result in results.items():
        if method == reference:
            continue
        statistic, n = task.paired_statistic(result, results[reference])
        low, high, p = metrics.paired_bootstrap_test(statistic, n)
        difference = result["score"] - results[reference]["score"]
        out[method] = {"difference": difference, "ci": (low, high), "within_noise": low <= 0 <= high, "p": p}
    for method, holds in metrics.holm({method: c["p"] for method, c in out.items()}).items():
        out[method]["holm"] = holds and not out[method]["within_noise"]
    return out
