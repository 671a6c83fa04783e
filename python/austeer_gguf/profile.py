"""A steering profile: the atomic units to scale, their scores, and alpha."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fingerprint import ModelFingerprint
from .sites import SITE_CODES, SITES, ModelShape

SCHEMA_VERSION = 1


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

    Construction checks everything that does not depend on a model (types, known sites, finite numbers,
    no duplicate unit); `check_model` checks ranges against a loaded model.
    """

    name: str
    alpha: float
    units: tuple[Unit, ...]
    model: ModelFingerprint | None = None
    n_pairs: int | None = None
    data_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("profile name must be a non-empty string")
        if not _is_real(self.alpha) or not math.isfinite(self.alpha):
            raise ValueError(f"profile {self.name!r}: alpha must be a finite number, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "units", tuple(self.units))
        seen: set[tuple[int, str, int]] = set()
        for index, unit in enumerate(self.units):
            _check_unit(self.name, index, unit)
            key = (unit.layer, unit.site, unit.dim)
            if key in seen:
                raise ValueError(f"profile {self.name!r}: unit #{index} {unit.describe()} appears twice")
            seen.add(key)
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"profile {self.name!r}: schema version {self.schema_version} is not supported "
                             f"(this austeer-gguf reads version {SCHEMA_VERSION})")

    @property
    def k(self) -> int:
        return len(self.units)

    @property
    def sites(self) -> tuple[str, ...]:
        present = {unit.site for unit in self.units}
        return tuple(site for site in SITES if site in present)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({unit.layer for unit in self.units}))

    def factors(self, strength: float = 1.0) -> np.ndarray:
        """The float32 factor of every unit, rounded exactly as the native callback computes it."""
        gains = self.gains()
        return np.float32(1.0) + np.float32(strength) * gains

    def gains(self) -> np.ndarray:
        return np.array([self.alpha * unit.score for unit in self.units], dtype=np.float32)

    def native_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(layers, site codes, dims, gains) as the native state takes them."""
        layers = np.array([u.layer for u in self.units], dtype=np.int32)
        sites = np.array([SITE_CODES[u.site] for u in self.units], dtype=np.int32)
        dims = np.array([u.dim for u in self.units], dtype=np.int32)
        return layers, sites, dims, self.gains()

    def check_model(self, shape: ModelShape, fingerprint: ModelFingerprint | None = None,
                    *, allow_mismatch: bool = False) -> None:
        """Raise ValueError naming the first unit that does not fit `shape`, or a fingerprint mismatch."""
        if fingerprint is not None and self.model is not None and not allow_mismatch:
            why = self.model.mismatch(fingerprint)
            if why is not None:
                raise ValueError(f"profile {self.name!r} was made for another model: {why}. Localize it on "
                                 "this model, or pass allow_model_mismatch=True (--force) to apply it anyway")
        for index, unit in enumerate(self.units):
            if not 0 <= unit.layer < shape.n_layers:
                raise ValueError(f"profile {self.name!r}: unit #{index} {unit.describe()}: layer out of range; "
                                 f"this model has {shape.describe_range(unit.site)}")
            if not 0 <= unit.dim < shape.widths[unit.site]:
                raise ValueError(f"profile {self.name!r}: unit #{index} {unit.describe()}: dim out of range; "
                                 f"this model has {shape.describe_range(unit.site)}")

    def top(self, k: int) -> Profile:
        """The first k units (profiles keep units in rank order)."""
        return dataclasses.replace(self, units=self.units[:k])

    # ---- JSON -------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "name": self.name,
            "alpha": self.alpha,
            "k": self.k,
            "sites": list(self.sites),
            "units": [{"layer": u.layer, "site": u.site, "dim": u.dim, "score": u.score} for u in self.units],
        }
        if self.model is not None:
            data["model"] = self.model.to_dict()
        if self.n_pairs is not None:
            data["n_pairs"] = self.n_pairs
        if self.data_sha256 is not None:
            data["data_sha256"] = self.data_sha256
        if self.extra:
            data["extra"] = self.extra
        return data

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        if path is not None:
            from .atomic import atomic_write_text

            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_dict(cls, data: Any) -> Profile:
        if not isinstance(data, dict):
            raise ValueError("a profile must be a JSON object")
        for key in ("name", "alpha", "units"):
            if key not in data:
                raise ValueError(f"profile is missing the field {key!r}")
        if not isinstance(data["units"], list):
            raise ValueError("profile field 'units' must be a list")
        units = tuple(_unit_from_dict(index, item) for index, item in enumerate(data["units"]))
        n_pairs = data.get("n_pairs")
        if n_pairs is not None and (not isinstance(n_pairs, int) or isinstance(n_pairs, bool)):
            raise ValueError("profile field 'n_pairs' must be an integer")
        return cls(
            name=data["name"],
            alpha=data["alpha"],
            units=units,
            model=ModelFingerprint.from_dict(data["model"]) if data.get("model") is not None else None,
            n_pairs=n_pairs,
            data_sha256=data.get("data_sha256"),
            extra=dict(data.get("extra") or {}),
            schema_version=data.get("schema_version", SCHEMA_VERSION),
        )

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> Profile:
        """Read a profile from a JSON file path or from JSON text."""
        if isinstance(path_or_text, str) and path_or_text.lstrip().startswith(("{", "[")):
            text, origin = path_or_text, "profile JSON"
        else:
            path = Path(path_or_text)
            if not path.is_file():
                raise FileNotFoundError(f"profile file {path} does not exist")
            text, origin = path.read_text(encoding="utf-8"), str(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{origin} is not valid JSON: {error}") from None
        return cls.from_dict(data)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_unit(profile_name: str, index: int, unit: Any) -> None:
    where = f"profile {profile_name!r}: unit #{index}"
    if not isinstance(unit, Unit):
        raise ValueError(f"{where} is a {type(unit).__name__}, not a Unit")
    if unit.site not in SITE_CODES:
        raise ValueError(f"{where} {unit.describe()}: unknown site {unit.site!r}; sites are {', '.join(SITES)}")
    if not _is_int(unit.layer) or unit.layer < 0:
        raise ValueError(f"{where} {unit.describe()}: layer must be a non-negative integer")
    if not _is_int(unit.dim) or unit.dim < 0:
        raise ValueError(f"{where} {unit.describe()}: dim must be a non-negative integer")
    if not _is_real(unit.score) or not math.isfinite(unit.score):
        raise ValueError(f"{where} {unit.describe()}: score must be a finite number")


def _unit_from_dict(index: int, item: Any) -> Unit:
    if not isinstance(item, dict):
        raise ValueError(f"unit #{index} must be an object with layer, site, dim and score")
    missing = [key for key in ("layer", "site", "dim", "score") if key not in item]
    if missing:
        raise ValueError(f"unit #{index} is missing {', '.join(missing)}")
    return Unit(layer=item["layer"], site=item["site"], dim=item["dim"], score=item["score"])
