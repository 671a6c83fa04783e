"""Matched-cost evidence: does AUSteer beat block-level steering and prompting at the same side-effect budget?

For one model and one task:
1. One capture pass over the task's train pairs (>= 1,000) on the float model gives the momentum counts of
   every site and the CAA mean difference of the residual stream.
2. Every method has a strength axis that runs from no effect to breakage:
     austeer        top-k units of one site (k in ks, site in sites) x alpha
     single-unit    the best unit of a site x alpha
     whole-layer    every dim of the layer where a site separates the pairs most, momentum-signed x alpha
     random-units   k random units of the dev-best AUSteer (site, k), their own momentum scores x alpha
     caa-layer      the CAA direction of one layer (every `caa_layer_step`-th layer) x multiplier
     caa-range      the CAA directions of a layer range x multiplier
     prompting      asking the model (the task's instruction), no axis
     prompting+austeer  asking the model and the AUSteer axis of the dev-best (site, k)
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

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import datasets
from ..control_vector import ControlVector
from ..localization.capture import PairCapture
from ..localization.reducers import MeanDifference, MomentumCounts, rank_units
from ..profile import Profile, Unit
from . import metrics
from .calibrate import PerplexityRatio
from .evaluate import NeutralKL
from .tasks import Task

DISTINCT2_RATIO = 0.8  # distinct bigrams of generated texts, steered / unsteered, at least: loops pass perplexity


@dataclass(frozen=True)
class Budget:
    name: str
    kl: float
    perplexity: float
    distinct2: float = DISTINCT2_RATIO  # generation tasks only, on the dev texts


BUDGETS = (Budget("tight", 0.1, 1.1), Budget("loose", 0.3, 1.3))


@dataclass(frozen=True)
class Setting:
    method: str
    site: str | None = None
    k: int | None = None
    alpha: float | None = None
    layer: int | None = None
    layers: tuple[int, int] | None = None
    multiplier: float | None = None
    seed: int | None = None
    prompted: bool = False

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
class SweepConfig:
    sites: tuple[str, ...] = ("attn", "ffn", "layer")
    ks: tuple[int, ...] = (5, 20, 100)
    alphas: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    layer_alphas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
    multipliers: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0)
    caa_layer_step: int = 3
    random_seeds: tuple[int, ...] = (0,)
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
    n_pairs: int = 0
    trials: list[Trial] = field(default_factory=list)  # every screened setting, dev-measured ones with a score
    chosen: dict[str, dict[str, Trial]] = field(default_factory=dict)  # budget -> method -> dev trial
    test: dict[str, dict[str, dict]] = field(default_factory=dict)  # budget -> method -> test result
    comparisons: dict[str, dict[str, dict]] = field(default_factory=dict)  # budget -> method -> vs AUSteer
    trial_counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, default=_plain) + "\n")


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


class Sweeper:
    def __init__(self, llm, float_model: str | Path, task: Task, config: SweepConfig) -> None:
        self.llm = llm
        self.float_model = Path(float_model)
        self.task = task
        self.config = config
        self.counts: MomentumCounts | None = None
        self.control: ControlVector | None = None
        self._kl: NeutralKL | None = None  # side effects, made once the model's unsteered outputs are known
        self._fluency: PerplexityRatio | None = None
        self._baseline_distinct2: float | None = None
        self._tested: dict[Setting, dict] = {}

    # ---- settings -------------------------------------------------------------------------------------

    def _apply(self, setting: Setting) -> None:
        steering = self.llm.steering
        steering.set_control_vector(None)
        steering.set_profile(self._profile(setting))
        steering.strength = 1.0
        steering.enable()

    def _profile(self, setting: Setting) -> Profile | None:
        counts, method = self.counts, setting.method
        if method in ("unsteered", "prompting"):
            return None
        if method in ("caa-layer", "caa-range"):
            first, last = setting.layers or (setting.layer, setting.layer)
            return Profile(method, 1.0, [], control=dataclasses.replace(
                self.control.restricted(first, last),
                directions=self.control.restricted(first, last).scaled(setting.multiplier)))
        if method in ("austeer", "single-unit", "prompting+austeer"):
            units = [Unit(u.layer, u.site, u.dim, u.score) for u in rank_units(counts.only(setting.site), setting.k)]
            return Profile(method, setting.alpha, units)
        scores = counts.scores(setting.site)
        if method == "whole-layer":
            units = [Unit(setting.layer, setting.site, dim, float(scores[setting.layer, dim]))
                     for dim in range(scores.shape[1]) if scores[setting.layer, dim] != 0]
        else:  # random-units
            rng = np.random.default_rng(setting.seed)
            flat = rng.choice(scores.size, size=setting.k, replace=False)
            units = [Unit(int(i // scores.shape[1]), setting.site, int(i % scores.shape[1]), float(scores.flat[i]))
                     for i in flat if scores.flat[i] != 0]
        return Profile(method, setting.alpha, units)

    def axis(self, method: str, best: Setting | None = None) -> list[Setting]:
        """The method's settings, weakest first."""
        config, counts = self.config, self.counts
        if method == "austeer":
            return [Setting(method, site, k, alpha) for site in config.sites for k in config.ks
                    for alpha in config.alphas]
        if method == "single-unit":
            return [Setting(method, site, 1, alpha) for site in config.sites for alpha in config.alphas]
        if method == "whole-layer":
            return [Setting(method, site, None, alpha, layer=int(np.argmax(counts.layer_strength(site))))
                    for site in config.sites for alpha in config.layer_alphas]
        if method == "random-units":
            return [Setting(method, best.site, best.k, alpha, seed=seed) for seed in config.random_seeds
                    for alpha in config.alphas]
        if method == "caa-layer":
            layers = range(1, counts.n_layers, config.caa_layer_step)
            return [Setting(method, layer=layer, multiplier=m) for layer in layers for m in config.multipliers]
        if method == "caa-range":
            n, third = counts.n_layers, max(1, counts.n_layers // 3)
            ranges = [(1, n - 1), (1, third), (third, 2 * third), (2 * third, n - 1)]
            return [Setting(method, layers=r, multiplier=m) for r in ranges for m in config.multipliers]
        if method == "prompting":
            return [Setting(method, prompted=True)]
        if method == "prompting+austeer":
            return [Setting(method, best.site, best.k, alpha, prompted=True) for alpha in config.alphas]
        raise ValueError(f"unknown method {method!r}")

    # ---- measuring ------------------------------------------------------------------------------------

    def _evaluate(self, setting: Setting, split: str, **options):
        self._apply(setting)
        limit = self.config.dev_limit if split == "dev" else self.config.test_limit
        return self.task.evaluate(self.llm, split, limit=limit, max_tokens=self.config.max_tokens,
                                  prompted=setting.prompted, **options)

    def _screen(self, setting: Setting) -> Trial:
        self._apply(setting)
        return Trial(setting, 0.0 if setting.method in ("unsteered", "prompting") else self._kl())

    def _measure(self, trial: Trial) -> Trial:
        result = self._evaluate(trial.setting, "dev")
        self._apply(trial.setting)
        trial.perplexity_ratio = 1.0 if trial.setting.method in ("unsteered", "prompting") else self._fluency()
        trial.score = float(self.task.score(result))
        if self.task.kind == "generation":
            if self._baseline_distinct2 is None:  # the first measurement is the unsteered one
                self._baseline_distinct2 = result.distinct2
            base = self._baseline_distinct2
            trial.distinct2_ratio = result.distinct2 / base if base > 0 else 1.0
        data = result.to_dict()
        for key in ("predictions", "items", "labels", "margins"):
            data.pop(key, None)
        trial.result = data
        return trial

    def _pick(self, screened: list[Trial]) -> list[Trial]:
        """`trials` settings: spread evenly by KL among those within the screen (weakest and strongest kept),
        and the first ones beyond it (where the axis breaks: at least one, more when too few are within)."""
        ordered = sorted(screened, key=lambda t: t.kl)
        inside = [t for t in ordered if t.kl <= self.config.screen_kl]
        beyond = [t for t in ordered if t.kl > self.config.screen_kl]
        n = min(self.config.trials, len(ordered))
        n_beyond = min(len(beyond), max(1 if beyond else 0, n - len(inside)))
        n_inside = n - n_beyond
        spread = np.linspace(0, len(inside) - 1, n_inside) if n_inside else []
        return [inside[i] for i in sorted({round(x) for x in spread})] + beyond[:n_beyond]

    # ---- the sweep -----------------------------------------------------------------------------------

    def run(self, model_name: str, log=print) -> SweepReport:
        config, task = self.config, self.task
        report = SweepReport(model_name, task.name, task.kind, task.provenance, asdict(config))
        clock = time.perf_counter()
        self._localize()
        report.n_pairs = self.counts.n_pairs
        report.seconds["localize"] = time.perf_counter() - clock
        clock = time.perf_counter()
        self._kl = NeutralKL(self.llm, datasets.prompts("neutral", "train")[: config.neutral_texts])
        self._fluency = PerplexityRatio(self.llm, datasets.prompts("neutral", "dev")[:12], max_tokens=16)

        baseline = self._measure(Trial(Setting("unsteered"), 0.0))
        report.trials.append(baseline)
        best_austeer: Setting | None = None
        for method in ("austeer", "single-unit", "whole-layer", "caa-layer", "caa-range", "prompting",
                       "random-units", "prompting+austeer"):
            screened = [self._screen(setting) for setting in self.axis(method, best_austeer)]
            measured = [self._measure(trial) for trial in self._pick(screened)]
            report.trials += screened
            report.trial_counts[method] = len(measured)
            if method == "austeer":
                fine = [t for t in measured if t.within(config.budgets[-1])] or measured
                best = max(fine, key=lambda t: t.score)
                best_austeer = best.setting
            log(f"  {method:18} {len(screened):3d} screened, {len(measured)} measured on dev; best "
                f"{max((t.score for t in measured), default=float('nan')):.3f}")
        report.seconds["dev"] = time.perf_counter() - clock

        clock = time.perf_counter()
        for budget in config.budgets:
            methods = {t.setting.method for t in report.trials}
            chosen = {"unsteered": baseline}
            for method in sorted(methods - {"unsteered"}):
                fine = [t for t in report.trials if t.setting.method == method and t.within(budget)]
                if fine:
                    chosen[method] = max(fine, key=lambda t: t.score)
            report.chosen[budget.name] = chosen
            report.test[budget.name] = {method: self._test(trial.setting) for method, trial in chosen.items()}
            for method, result in report.test[budget.name].items():
                log(f"  test {budget.name:5} {method:18} {result['score']:.3f}  ({chosen[method].setting.label()})")
            report.comparisons[budget.name] = compare(self.task, report.test[budget.name])
        report.seconds["test"] = time.perf_counter() - clock
        self._apply(Setting("unsteered"))
        return report

    def _localize(self) -> None:
        """One capture pass over the train pairs: momentum counts of every site and the CAA mean difference."""
        captured = tuple(dict.fromkeys([*self.config.sites, "layer"]))
        with PairCapture(self.float_model, self.task.train, captured, n_threads=self.config.threads,
                         progress=False) as capture:
            self.counts = MomentumCounts.for_shape(capture.shape, self.config.sites)
            difference = MeanDifference.for_shape(capture.shape, "layer")
            capture.feed(self.counts, difference)
        self.control = difference.control_vector(capture.shape.architecture)

    def _test(self, setting: Setting) -> dict:
        """The test result of a setting, measured once however many budgets choose it."""
        if setting not in self._tested:
            self._tested[setting] = self._measure_test(setting)
        return self._tested[setting]

    def _measure_test(self, setting: Setting) -> dict:
        if self.task.kind == "choice":
            result = self._evaluate(setting, "test").to_dict()
            result["score"] = result["balanced_accuracy"]
            return result
        # Refusals of harmless requests are a side check: measured on the first seed's run only.
        runs = [self._evaluate(setting, "test", temperature=self.config.temperature, seed=1000 * seed,
                               side=seed == 0) for seed in range(self.config.seeds)]
        items = [dict(item, seed=seed) for seed, run in enumerate(runs) for item in run.items]
        merged = runs[0].to_dict()
        for key in ("sentiment", "offensive", "offensive_rate", "refusal_rate", "distinct2", "side_refusal_rate"):
            values = [getattr(run, key) for run in runs if getattr(run, key) is not None]
            merged[key] = float(np.mean(values)) if values else None
        merged["perplexity"] = float(np.median([item["perplexity"] for item in items]))
        merged["items"] = items
        merged["score"] = float(self.task.sign * merged[self.task.behaviour])
        return merged

def compare(task: Task, results: dict[str, dict]) -> dict[str, dict]:
    """Each method against AUSteer on the same test items: the difference of the task statistic, a paired
    bootstrap 95% interval (`within_noise` when it contains 0), its p-value, and whether the difference holds
    after Holm's correction over the budget's comparisons (`holm`, family-wise 5%)."""
    if "austeer" not in results:
        return {}
    reference = results["austeer"]
    out = {}
    for method, result in results.items():
        if method == "austeer":
            continue
        statistic, n = _paired_statistic(task, result, reference)
        low, high, p = metrics.paired_bootstrap_test(statistic, n)
        difference = result["score"] - reference["score"]
        out[method] = {"difference": difference, "ci": (low, high), "within_noise": low <= 0 <= high, "p": p}
    for method, holds in metrics.holm({method: c["p"] for method, c in out.items()}).items():
        out[method]["holm"] = holds and not out[method]["within_noise"]
    return out


def _paired_statistic(task: Task, a: dict, b: dict):
    """statistic(indices) = task score of a minus that of b over resampled test items."""
    if task.kind == "choice":
        labels = np.array(a["labels"])
        right_a = np.array(a["predictions"]) == labels
        right_b = np.array(b["predictions"]) == labels

        def balanced(right: np.ndarray, index: np.ndarray) -> float:
            chosen = labels[index]
            return float(np.mean([right[index][chosen == c].mean() for c in np.unique(chosen)]))

        return (lambda index: balanced(right_a, index) - balanced(right_b, index)), len(labels)
    key = task.behaviour

    def per_item(result: dict) -> np.ndarray:
        if key == "offensive_rate":
            values = np.array([item["offensive"] > 0.5 for item in result["items"]], dtype=float)
        else:
            values = np.array([item[key] for item in result["items"]], dtype=float)
        return task.sign * values

    values_a, values_b = per_item(a), per_item(b)
    return (lambda index: float(values_a[index].mean() - values_b[index].mean())), len(values_a)
