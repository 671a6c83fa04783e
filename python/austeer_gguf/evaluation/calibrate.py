"""Calibrated strength: the strength at which a profile's side effect on neutral text meets a budget.

The side effect is KL(steered || unsteered) of next-token distributions on the shipped neutral texts (a few
hundred tokens), or the ratio of the perplexity of greedy continuations of neutral prompts (under the unsteered
model) to that of the unsteered continuations. The search scans strengths by factors of 2 from 1 (down while
the budget is exceeded, else up until it is), then bisects geometrically until the bracket is within
`tolerance`: the result is the largest strength found below the first one that exceeds the budget. Because
it is a first crossing, a larger budget never gives a smaller strength.

A calibrated profile has its alpha multiplied by the strength (so every runtime, export and bake uses it, and
`strength` stays a multiplier on top) and records the budget in `Profile.calibration`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import datasets
from ..control_vector import MAX_VALUE
from ..errors import InputError
from ..profile import MAX_ALPHA, MAX_FACTOR, MAX_STRENGTH, Profile
from ..setting import OFF, SteeringSetting
from .evaluate import NeutralKL, generate, perplexities


@dataclass
class Calibration:
    measure: str  # "kl" or "perplexity" (a ratio to unsteered)
    budget: float
    strength: float  # the largest strength whose side effect stays within the budget (0: none does)
    side_effect: float  # measured at that strength
    tolerance: float
    trials: list[tuple[float, float]] = field(default_factory=list)  # (strength, side effect)

    def record(self, profile: Profile) -> dict[str, Any]:
        return {"measure": self.measure, "budget": self.budget, "strength": self.strength,
                "side_effect": self.side_effect, "alpha_before": profile.alpha}


def neutral_texts() -> list[str]:
    return datasets.prompts("neutral", "train")


class PerplexityRatio:
    """Median perplexity of greedy continuations of neutral prompts under the unsteered model, as a ratio to
    that of the unsteered continuations."""

    def __init__(self, llm, prompts: Sequence[str], max_tokens: int = 24) -> None:
        self.llm, self.prompts, self.max_tokens = llm, list(prompts), max_tokens
        self.baseline = self._medians([OFF])[0]

    def _medians(self, settings: Sequence[SteeringSetting]) -> list[float]:
        """The median perplexity of each setting's continuations, every setting's generated together (several
        settings in one decode; equal to one at a time up to the rounding of batched decoding)."""
        n = len(self.prompts)
        prompts = self.prompts * len(settings)
        texts = generate(self.llm, prompts, chat=False, max_tokens=self.max_tokens,
                         settings=[setting for setting in settings for _ in range(n)])
        values = perplexities(self.llm, prompts, texts, chat=False)
        return [float(np.median(values[i * n:(i + 1) * n])) for i in range(len(settings))]

    def __call__(self, setting: SteeringSetting | None = None) -> float:
        """The ratio under `setting` (default: the model's current setting)."""
        return self._medians([self.llm.current_setting() if setting is None else setting])[0] / self.baseline

    def many(self, settings: Sequence[SteeringSetting]) -> list[float]:
        """The ratio of each setting, measured together."""
        return [median / self.baseline for median in self._medians(settings)]


def calibrate(llm, profile: Profile, *, kl: float | None = None, perplexity_ratio: float | None = None,
              texts: Sequence[str] | None = None, tolerance: float = 0.05, max_steps: int = 40,
              allow_model_mismatch: bool = False) -> Calibration:
    """The largest strength (within `tolerance`, relative) at which `profile` on `llm` keeps its side effect on
    neutral text within the budget. Each trial is a setting of its own: the model's controls are not touched."""
    if (kl is None) == (perplexity_ratio is None):
        raise InputError("give one budget: kl (e.g. 0.05) or perplexity_ratio (e.g. 1.1)")
    measure, budget = ("kl", kl) if kl is not None else ("perplexity", perplexity_ratio)
    low_end = 0.0 if measure == "kl" else 1.0
    if not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= low_end:
        raise InputError(f"the {measure} budget must be a finite number above {low_end:g}, got {budget!r}")
    if not 0 < tolerance < 1:
        raise InputError(f"tolerance must lie in (0, 1), got {tolerance!r}")
    SteeringSetting.make(llm.shape, llm.fingerprint, profiles=[(profile, 1.0)],
                         allow_model_mismatch=allow_model_mismatch)  # refuse a misfit before measuring anything
    texts = list(texts or neutral_texts())
    side_effect: Callable[[SteeringSetting], float] = (NeutralKL(llm, texts) if measure == "kl"
                                                      else PerplexityRatio(llm, texts))
    return _search(_measure_at(llm, profile, side_effect, allow_model_mismatch), profile, measure, budget,
                   tolerance, max_steps)


def calibrate_kl_budgets(llm, profile: Profile, budgets: Sequence[float], *, tolerance: float = 0.05,
                         max_steps: int = 40) -> list[Calibration]:
    """`calibrate` to each KL budget in turn, measuring the unsteered reference once and no strength twice (the
    searches share their first steps: strength 1, then factors of 2)."""
    return calibrate_profiles_kl(llm, [profile], budgets, tolerance=tolerance, max_steps=max_steps)[0]


def calibrate_profiles_kl(llm, profiles: Sequence[Profile], budgets: Sequence[float], *, tolerance: float = 0.05,
                          max_steps: int = 40, settings_per_pass: int = 1) -> list[list[Calibration]]:
    """`calibrate_kl_budgets` of several profiles, their searches in lockstep: each step measures the next
    strength of every profile's search (`NeutralKL.many`, `settings_per_pass` settings per decode: more gained
    nothing on CPUs, `scripts/bench_calibration.py`). Each profile's searches, and so its calibrations, are those it has
    alone."""
    side_effect = NeutralKL(llm, neutral_texts(), settings_per_pass=settings_per_pass)
    measured: list[dict[float, float]] = [{} for _ in profiles]

    def searches(index: int) -> Generator[float, float, list[Calibration]]:
        """One profile's budgets in turn, asking only for strengths not measured yet."""
        out = []
        for budget in budgets:
            search = _searcher(profiles[index], "kl", budget, tolerance, max_steps)
            strength = next(search)
            try:
                while True:
                    if strength not in measured[index]:
                        measured[index][strength] = yield strength
                    strength = search.send(measured[index][strength])
            except StopIteration as done:
                out.append(done.value)
        return out

    running = {index: searches(index) for index in range(len(profiles))}
    asked = {index: next(search, None) for index, search in running.items()}  # a generator's first ask
    results: list[list[Calibration]] = [[] for _ in profiles]
    while running:
        settings = [SteeringSetting.make(llm.shape, llm.fingerprint, profiles=[(profiles[index], 1.0)],
                                         strength=asked[index]) for index in running]
        for index, value in zip(list(running), side_effect.many(settings)):
            try:
                asked[index] = running[index].send(value)
            except StopIteration as done:
                results[index] = done.value
                del running[index]
    return results


def _search(measure_at: Callable[[float], float], profile: Profile, measure: str, budget: float, tolerance: float,
            max_steps: int) -> Calibration:
    """The scan and bisection of the module docstring, for one budget, measuring each strength as asked."""
    search = _searcher(profile, measure, budget, tolerance, max_steps)
    strength = next(search)
    try:
        while True:
            strength = search.send(measure_at(strength))
    except StopIteration as done:
        return done.value


def _measure_at(llm, profile: Profile, side_effect: Callable[[SteeringSetting], float],
                allow_model_mismatch: bool) -> Callable[[float], float]:
    def at(strength: float) -> float:
        return side_effect(SteeringSetting.make(llm.shape, llm.fingerprint, profiles=[(profile, 1.0)],
                                                strength=strength, allow_model_mismatch=allow_model_mismatch))

    return at


def _searcher(profile: Profile, measure: str, budget: float, tolerance: float,
              max_steps: int) -> Generator[float, float, Calibration]:
    """The search as a generator: it yields each strength to measure, is sent its side effect, and returns the
    calibration."""
    trials: list[tuple[float, float]] = []
    ceiling = _strength_ceiling(profile)
    low, high = yield from _bracket(trials, budget, ceiling, max_steps)
    while high is not None and low > 0 and high / low > 1 + tolerance and len(trials) < max_steps:
        middle = math.sqrt(low * high)
        value = yield middle
        trials.append((middle, value))
        if value <= budget:
            low = middle
        else:
            high = middle
    measured = dict(trials).get(low, 0.0)
    return Calibration(measure, float(budget), float(low), float(measured), tolerance, trials)


def _strength_ceiling(profile: Profile) -> float:
    """The largest strength the profile can take (factor, alpha and control-vector bounds)."""
    gains = max((abs(profile.alpha * unit.score) for unit in profile.units), default=0.0)
    if gains == 0.0 and profile.control is None:
        raise InputError(f"profile {profile.name!r} steers nothing (no units, or alpha 0): nothing to calibrate")
    ceiling = MAX_STRENGTH
    if gains > 0.0:
        ceiling = min(ceiling, MAX_FACTOR / gains, MAX_ALPHA / max(abs(profile.alpha), 1e-12))
    if profile.control is not None:  # the strength multiplies the vector too
        largest = max(float(np.abs(d).max(initial=0.0)) for d in profile.control.directions.values())
        ceiling = min(ceiling, MAX_VALUE / max(largest, 1e-12))
    return ceiling


def _bracket(trials: list[tuple[float, float]], budget: float, ceiling: float,
             max_steps: int) -> Generator[float, float, tuple[float, float | None]]:
    """(low within budget or 0, high over budget or None when even the ceiling stays within it), asking for
    each strength's side effect and recording it in `trials`."""

    def at(strength: float):
        value = yield strength
        trials.append((strength, value))
        return value

    strength = min(1.0, ceiling)
    if (yield from at(strength)) <= budget:
        while True:
            following = strength * 2
            if following > ceiling:
                return strength, None
            if (yield from at(following)) > budget:
                return strength, following
            strength = following
    for _ in range(max_steps):
        lower = strength / 2
        if (yield from at(lower)) <= budget:
            return lower, strength
        strength = lower
        if strength < 1e-4:
            break
    return 0.0, strength


def calibrated(profile: Profile, calibration: Calibration) -> Profile:
    """The profile with alpha (and its control vector) multiplied by the calibrated strength, recording the
    calibration."""
    if calibration.strength <= 0:
        raise InputError(f"no strength of profile {profile.name!r} keeps the {calibration.measure} within "
                         f"{calibration.budget:g}: raise the budget, or localize fewer units")
    control = profile.control
    if control is not None:
        control = dataclasses.replace(control, directions=control.scaled(calibration.strength))
    return dataclasses.replace(profile, alpha=float(np.float64(profile.alpha) * calibration.strength),
                               calibration=calibration.record(profile), control=control)
