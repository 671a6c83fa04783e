"""What a build has measured, saved as it goes: an interrupted `build` resumes from it, and a finished one keeps
it as the per-item data behind its report card.

Two files beside the profile `<name>.json`: `<name>.build.json` (what the build is of, its plan, and every
trial's result with its items) and `<name>.evidence.npz` (the capture pass: momentum counts, last-token and
position-pooled, the CAA mean difference and the pairs' direction agreement).
A record whose identity (model fingerprint, behaviour, time budget, and for an own behaviour its files, metric
and instruction) differs from the run's is not resumed: the run starts afresh and replaces it. Methods added
since the record was saved are measured when it resumes (results are kept per trial); a capture pass saved
before pooling is made again on the same pairs.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..control_vector import ControlVector
from ..ggufio.atomic import atomic_output, atomic_write_text
from ..jsonfile import read_json_file
from ..localization.reducers import MomentumCounts
from ..sites import ModelShape
from .methods import Evidence


class BuildRecord:
    def __init__(self, profile_path: Path, identity: dict[str, Any], *, fresh: bool = False) -> None:
        self.path = profile_path.with_suffix(".build.json")
        self.evidence_path = profile_path.with_suffix(".evidence.npz")
        self.identity = identity
        saved = read_json_file(self.path, "build record") if self.path.exists() and not fresh else None
        # Records saved before methods could be added on resume listed them in their identity.
        self.resumed = isinstance(saved, dict) and isinstance(saved.get("identity"), dict) and \
            {key: value for key, value in saved["identity"].items() if key != "methods"} == identity
        self.plan: dict[str, Any] | None = saved.get("plan") if self.resumed else None
        self.results: dict[str, dict] = saved.get("results", {}) if self.resumed else {}
        self.calibrations: dict[str, list] = saved.get("calibrations", {}) if self.resumed else {}
        self.opened = time.perf_counter()
        # Time the earlier runs of this build took (a record written before it was kept: its finished build's).
        self.earlier_seconds = float(saved.get("seconds", saved.get("build", {}).get("seconds", 0.0))) \
            if self.resumed else 0.0
        self.runs = int(saved.get("runs", 1)) + 1 if self.resumed else 1

    @property
    def seconds(self) -> float:
        """The time this build has taken, over every run so far."""
        return self.earlier_seconds + time.perf_counter() - self.opened

    def get(self, key: str) -> dict | None:
        return self.results.get(key)

    def put(self, key: str, result: dict) -> None:
        self.results[key] = result
        self.write()

    def put_calibrations(self, key: str, calibrations: list[dict]) -> None:
        self.calibrations[key] = calibrations
        self.write()

    def set_plan(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.write()

    def write(self, **extra: Any) -> None:
        data = {"identity": self.identity, "plan": self.plan, "seconds": self.seconds, "runs": self.runs, **extra,
                "calibrations": self.calibrations, "results": self.results}
        atomic_write_text(self.path, json.dumps(data, default=float) + "\n")

    # ---- the capture pass --------------------------------------------------------------------------------

    def save_evidence(self, evidence: Evidence) -> None:
        counts, control = evidence.counts, evidence.control
        arrays = {"n_pairs": np.array(counts.n_pairs), "control_layers": np.array(control.layers, dtype=np.int64)}
        for site in counts.sites:
            arrays[f"positive_{site}"] = counts.positive[site]
            arrays[f"negative_{site}"] = counts.negative[site]
        if evidence.pooled is not None:
            for site in evidence.pooled.sites:
                arrays[f"pooled_positive_{site}"] = evidence.pooled.positive[site]
                arrays[f"pooled_negative_{site}"] = evidence.pooled.negative[site]
        if evidence.agreement is not None:
            arrays["agreement"] = evidence.agreement
        if evidence.magnitude is not None:
            arrays["magnitude"] = evidence.magnitude
        if control.layers:
            arrays["control"] = np.stack([control.directions[layer] for layer in control.layers])
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        with atomic_output(self.evidence_path) as (file, _):
            file.write(buffer.getvalue())

    def load_evidence(self, shape: ModelShape) -> Evidence | None:
        """The saved capture pass of a resumed build (None: not saved, or not of this shape)."""
        if not self.resumed or not self.evidence_path.is_file():
            return None
        return self.read_evidence(self.evidence_path, shape)

    @staticmethod
    def read_evidence(path: Path, shape: ModelShape) -> Evidence | None:
        """A build's saved capture pass (`<profile>.evidence.npz`; None: not of this shape)."""
        with np.load(path) as data:
            sites = [name[len("positive_"):] for name in data.files if name.startswith("positive_")]
            if any(data[f"positive_{site}"].shape != (shape.n_layers, shape.widths.get(site, -1)) for site in sites):
                return None
            counts = MomentumCounts(shape.n_layers, {site: shape.widths[site] for site in sites}, int(data["n_pairs"]),
                                    {site: data[f"positive_{site}"] for site in sites},
                                    {site: data[f"negative_{site}"] for site in sites})
            layers = [int(layer) for layer in data["control_layers"]]
            directions = {layer: data["control"][i].astype(np.float32) for i, layer in enumerate(layers)}
            agreement = data["agreement"] if "agreement" in data.files else None
            magnitude = data["magnitude"] if "magnitude" in data.files else None
            pooled = None
            if all(f"pooled_positive_{site}" in data.files for site in sites):
                pooled = MomentumCounts(shape.n_layers, dict(counts.widths), counts.n_pairs,
                                        {site: data[f"pooled_positive_{site}"] for site in sites},
                                        {site: data[f"pooled_negative_{site}"] for site in sites}, pooled=True)
        return Evidence(counts, ControlVector(directions, shape.architecture, counts.n_pairs), shape,
                        agreement=agreement, magnitude=magnitude, pooled=pooled)
