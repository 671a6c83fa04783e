"""How much a build can measure in the minutes the user gives it (`build --minutes`), and what that buys.

Before anything else the build times one unsteered dev run of a few items (`seconds_per_item`: a reply, its
scores and a harmless side prompt) and one KL screen on neutral text. The capture pass then gets `CAPTURE_SHARE`
of the time (the first pairs that fit), the calibrations their estimate, and the rest is split between dev
(every trial on the same items) and test (each method's dev choice once, on more items). The expected
half-width of the headline's 95% interval follows from the spread of the probe's per-item values (assuming
replies on and off correlate at 0.5, so a paired difference varies as much as one reply): the card reports
the measured one beside it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError
from ..setting import OFF
from . import metrics
from .calibrate import neutral_texts
from .evaluate import NeutralKL
from .tasks import GenerationTask

CAPTURE_SHARE = 0.15
TEST_SHARE = 0.55  # of what is left after capture and calibration
KL_STEPS_PER_BUDGET = 6  # a calibration's strengths per budget (scan from 1 by factors of 2, then bisection)
PROBE_ITEMS = 8
MIN_DEV, MIN_TEST = 8, 20
SHORT_BUDGETS = (0.05, 0.1, 0.2)  # the KL grid of builds under LONG_MINUTES
LONG_MINUTES = 30


@dataclass(frozen=True)
class Probe:
    seconds_per_item: float
    seconds_per_kl: float
    item_spread: float  # standard deviation of the behaviour's per-item values, unsteered
    seconds: float  # what the probe took


@dataclass(frozen=True)
class BuildPlan:
    minutes: float
    capture_seconds: float
    kl_budgets: tuple[float, ...]
    dev_items: int
    test_items: int
    dev_trials: int
    expected_half_width: float  # of the headline difference's 95% interval, in the behaviour's units
    seconds_per_item: float
    minutes_for_tenth: float  # what an expected interval of +-0.1 would take

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"{self.dev_trials} dev trials on {self.dev_items} items, each method's choice on {self.test_items} "
                f"test items; expected 95% interval of the headline: +-{self.expected_half_width:.3f} (+-0.1 would "
                f"take about {self.minutes_for_tenth:.0f} minutes)")


def kl_budgets_for(minutes: float, full: tuple[float, ...]) -> tuple[float, ...]:
    return full if minutes >= LONG_MINUTES else SHORT_BUDGETS


def probe(llm, task: GenerationTask, max_tokens: int) -> Probe:
    started = time.perf_counter()
    task.evaluate(llm, "dev", setting=OFF, limit=1, max_tokens=2)  # loads the scorers: not a prompt's cost
    timed = time.perf_counter()
    items = min(PROBE_ITEMS, len(task.dev))
    result = task.evaluate(llm, "dev", setting=OFF, limit=items, max_tokens=max_tokens)
    per_item = (time.perf_counter() - timed) / items
    kl = NeutralKL(llm, neutral_texts())
    kl_started = time.perf_counter()
    kl(OFF)
    seconds_per_kl = time.perf_counter() - kl_started
    values = [metrics.ITEM_VALUES[task.behaviour](item) for item in result.items]
    spread = float(np.std(values)) if len(values) > 1 else 0.5
    return Probe(per_item, seconds_per_kl, max(spread, 0.25), time.perf_counter() - started)


def size(minutes: float, spent: float, probe: Probe, task: GenerationTask, *, dev_trials: int,
         calibrated_points: int, test_runs: int, kl_budgets: tuple[float, ...]) -> BuildPlan:
    """Dev and test sizes that fit the minutes left after `spent` seconds (probe and capture done)."""
    total = minutes * 60
    calibration = calibrated_points * len(kl_budgets) * KL_STEPS_PER_BUDGET * probe.seconds_per_kl
    left = total - spent - calibration
    if left <= 0:
        needed = minutes_for(0.1, probe, calibration=calibration, test_runs=test_runs, spent=probe.seconds)
        raise InputError(f"{minutes:g} minutes do not leave time to measure anything on this model (the probe and "
                         f"capture took {spent / 60:.1f} min, calibration needs ~{calibration / 60:.1f}; a prompt "
                         f"takes {probe.seconds_per_item:.1f} s): give more --minutes (about {needed:.0f} for a "
                         "+-0.1 interval)")
    dev_items = int(left * (1 - TEST_SHARE) / max(dev_trials, 1) / probe.seconds_per_item)
    test_items = int(left * TEST_SHARE / max(test_runs, 1) / probe.seconds_per_item)
    dev_items = min(max(dev_items, MIN_DEV), len(task.dev))
    test_items = min(max(test_items, MIN_TEST), len(task.test))
    half_width = 1.96 * probe.item_spread / math.sqrt(test_items)
    return BuildPlan(minutes, CAPTURE_SHARE * total, tuple(kl_budgets), dev_items, test_items, dev_trials,
                     half_width, probe.seconds_per_item, minutes_for(0.1, probe, calibration=calibration,
                                                                     test_runs=test_runs, spent=probe.seconds))


def minutes_for(half_width: float, probe: Probe, *, calibration: float, test_runs: int, spent: float) -> float:
    """The minutes a build needs for an expected headline interval of +-`half_width` (with the same shares: test
    gets TEST_SHARE of what capture and calibration leave)."""
    test_items = math.ceil((1.96 * probe.item_spread / half_width) ** 2)
    left = test_runs * test_items * probe.seconds_per_item / TEST_SHARE
    return (spent + calibration + left) / (1 - CAPTURE_SHARE) / 60
