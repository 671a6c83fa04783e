"""A steering profile: the atomic units to scale, their scores, and alpha; the one steering formula.

A unit's factor is ``1 + strength * alpha * score`` (`Profile.factors`): the native callback, the bake and
the LoRA export all take their factors from there. A profile is a value: its JSON file and its embedded form
are `formats.profiles`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import sites
from .control_vector import ControlVector
from .errors import InputError
from .fingerprint import ModelFingerprint
from .jsonfile import is_number
from .sites import ModelShape

SCHEMA_VERSION = 1
MAX_UNITS = 65_536  # a whole layer of the widest built-in site is 1,024 units
MAX_ALPHA = 10_000.0  # the reference's largest setting is 100
MAX_STRENGTH = 1_000.0
MAX_FACTOR = 1e6  # |1 + strength * alpha * score| beyond this is breakage, not steering


@dataclass(frozen=True)
class Unit:
    """One atomic unit: coordinate `dim` of `site` at `layer`, with its momentum score in [-1, 1]."""

    layer: int
    site: str
    dim: int
    score: float

    def describe(self) -> str:
        return f"(layer {self.layer}, site {self.site!r}, dim {self.dim}, score {self.score})"


@dataclass(frozen=True)
class Profile:
    """Units and alpha; a unit's factor is ``1 + strength * alpha * score``.

    Construction checks everything that does not depend on a model (types, known sites, finite numbers in
    range, no duplicate unit); `check_model` checks ranges against a model.
    """

    name: str
    alpha: float
    units: tuple[Unit, ...]
    model: ModelFingerprint | None = None
    n_pairs: int | None = None
    data_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    calibration: dict[str, Any] | None = None  # budget and strength the alpha was calibrated to (calibrate.py)
    control: ControlVector | None = None  # a CAA vector the profile also adds, times its strength and weight

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError("profile name must be a non-empty string")
        if not _is_real(self.alpha) or not math.isfinite(self.alpha) or abs(self.alpha) > MAX_ALPHA:
            raise InputError(f"profile {self.name!r}: alpha must be a finite number within +-{MAX_ALPHA:g}, "
                             f"got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if isinstance(self.units, (str, bytes, Mapping)):
            raise InputError(f"profile {self.name!r}: units must be a sequence of Unit")
        object.__setattr__(self, "units", tuple(self.units))
        if len(self.units) > MAX_UNITS:
            raise InputError(f"profile {self.name!r} has {len(self.units)} units; at most {MAX_UNITS} are supported")
        seen: set[tuple[int, str, int]] = set()
        for index, unit in enumerate(self.units):
            _check_unit(self.name, index, unit)
            key = (unit.layer, unit.site, unit.dim)
            if key in seen:
                raise InputError(f"profile {self.name!r}: unit #{index} {unit.describe()} appears twice")
            seen.add(key)
        if self.n_pairs is not None and (not _is_int(self.n_pairs) or self.n_pairs < 0):
            raise InputError(f"profile {self.name!r}: n_pairs must be a non-negative integer")
        if self.data_sha256 is not None and not isinstance(self.data_sha256, str):
            raise InputError(f"profile {self.name!r}: data_sha256 must be a string")
        if not isinstance(self.extra, dict):
            raise InputError(f"profile {self.name!r}: extra must be an object, got {type(self.extra).__name__}")
        if self.calibration is not None and not isinstance(self.calibration, dict):
            raise InputError(f"profile {self.name!r}: calibration must be an object")
        if self.control is not None and not isinstance(self.control, ControlVector):
            raise InputError(f"profile {self.name!r}: control must be a ControlVector")
        if self.model is not None and not isinstance(self.model, ModelFingerprint):
            raise InputError(f"profile {self.name!r}: model must be a ModelFingerprint")
        if self.schema_version != SCHEMA_VERSION:
            raise InputError(f"profile {self.name!r}: schema version {self.schema_version} is not supported "
                             f"(this austeer-gguf reads version {SCHEMA_VERSION})")

    @property
    def k(self) -> int:
        return len(self.units)

    @property
    def sites(self) -> tuple[str, ...]:
        present = {unit.site for unit in self.units}
        return tuple(site for site in sites.names() if site in present)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({unit.layer for unit in self.units}))

    def factors(self, strength: float = 1.0, *, bounded: bool = True) -> np.ndarray:
        """The float32 factor ``1 + strength * alpha * score`` of every unit, in unit order. `bounded`: refuse a
        strength beyond +-MAX_STRENGTH (a weight times a strength may exceed it; the factors stay bounded)."""
        strength = check_strength(strength) if bounded else float(strength)
        gains = np.array([self.alpha * unit.score for unit in self.units], dtype=np.float32)
        factors = np.float32(1.0) + np.float32(strength) * gains
        if factors.size and not float(np.abs(factors).max()) <= MAX_FACTOR:
            raise InputError(f"profile {self.name!r} at strength {strength:g} scales a unit by more than "
                             f"{MAX_FACTOR:g}: lower alpha or the strength")
        return factors

    def check_model(self, shape: ModelShape, fingerprint: ModelFingerprint | None = None,
                    *, allow_mismatch: bool = False) -> None:
        """Raise InputError naming the first unit that does not fit `shape`, or a fingerprint mismatch."""
        if fingerprint is not None and self.model is not None and not allow_mismatch:
            why = self.model.mismatch(fingerprint)
            if why is not None:
                raise InputError(f"profile {self.name!r} was made for another model: {why}. Localize it on "
                                 "this model, or pass allow_model_mismatch=True (--force) to apply it anyway")
        if self.control is not None:
            self.control.check_fits(shape.n_layers, shape.widths["layer"], f"profile {self.name!r}: its control vector")
        for index, unit in enumerate(self.units):
            if unit.site not in shape.widths:
                raise InputError(f"profile {self.name!r}: unit #{index} {unit.describe()}: this model has no "
                                 f"width for site {unit.site!r}")
            if not 0 <= unit.layer < shape.n_layers:
                raise InputError(f"profile {self.name!r}: unit #{index} {unit.describe()}: layer out of range; "
                                 f"this model has {shape.describe_range(unit.site)}")
            if not 0 <= unit.dim < shape.widths[unit.site]:
                raise InputError(f"profile {self.name!r}: unit #{index} {unit.describe()}: dim out of range; "
                                 f"this model has {shape.describe_range(unit.site)}")
        for site in self.sites:
            try:
                shape.check_present(site, {unit.layer for unit in self.units if unit.site == site})
            except InputError as error:
                raise InputError(f"profile {self.name!r}: {error}") from None

    def top(self, k: int) -> Profile:
        """The first k units (profiles keep units in rank order)."""
        return dataclasses.replace(self, units=self.units[:k])

    def renamed(self, name: str) -> Profile:
        return dataclasses.replace(self, name=name)


def check_strength(strength: Any) -> float:
    """A steering strength: a finite number within +-MAX_STRENGTH."""
    if not _is_real(strength) or not math.isfinite(strength) or abs(strength) > MAX_STRENGTH:
        raise InputError(f"strength must be a finite number within +-{MAX_STRENGTH:g}, got {strength!r}")
    return float(strength)


def parse_mix(text: str) -> list[tuple[str, float]]:
    """A mix of profiles as users write it: `polite`, `polite+positive`, `polite:0.5+positive` -> [(name or
    file, weight)]."""
    mix = []
    for part in str(text).split("+"):
        spec, colon, weight = part.strip().rpartition(":")
        if not colon:
            spec, weight = part.strip(), "1"
        try:
            value = float(weight)
        except ValueError:
            raise InputError(f"{weight!r} in {text!r} is not a weight; write NAME, NAME+NAME or "
                             "NAME:0.5+NAME") from None
        if not spec:
            raise InputError(f"{text!r} names no profile; write NAME, NAME+NAME or NAME:0.5+NAME")
        mix.append((spec, value))
    return mix


def _is_real(value: Any) -> bool:
    return is_number(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_unit(profile_name: str, index: int, unit: Any) -> None:
    where = f"profile {profile_name!r}: unit #{index}"
    if not isinstance(unit, Unit):
        raise InputError(f"{where} is a {type(unit).__name__}, not a Unit")
    if not isinstance(unit.site, str) or unit.site not in sites.names():
        raise InputError(f"{where} {unit.describe()}: unknown site {unit.site!r}; sites are "
                         f"{', '.join(sites.names())}")
    if not _is_int(unit.layer) or not 0 <= unit.layer < sites.MAX_LAYERS:
        raise InputError(f"{where} {unit.describe()}: layer must be a non-negative integer below "
                         f"{sites.MAX_LAYERS}")
    if not _is_int(unit.dim) or not 0 <= unit.dim < sites.MAX_WIDTH:
        raise InputError(f"{where} {unit.describe()}: dim must be a non-negative integer below {sites.MAX_WIDTH}")
    if not _is_real(unit.score) or not math.isfinite(unit.score):
        raise InputError(f"{where} {unit.describe()}: score must be a finite number")
    if not -1.0 <= unit.score <= 1.0:
        raise InputError(f"{where} {unit.describe()}: score must lie in [-1, 1] (a momentum score)")
