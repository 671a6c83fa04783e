"""A profile's two serializations, one owner: the JSON file users edit, and the compact form embedded in a
GGUF's metadata (`embedded`). Both carry the same optional fields (`_provenance`): the model fingerprint,
pairs, data hash, extra, calibration and a control vector (its directions as float32 lists, written exactly).

JSON:    {"schema_version": 1, "name", "alpha", "k", "sites", "units": [{"layer", "site", "dim", "score"}], ...}
compact: {"v": 1, "alpha", "layer": [..], "site": "aaf..", "dim": [..], "score": [..], ...} (site letters from the
         site registry; the name is the metadata key's)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import sites
from ..control_vector import ControlVector
from ..errors import InputError
from ..fingerprint import ModelFingerprint
from ..ggufio.atomic import atomic_write_text
from ..jsonfile import is_number, load_json, read_json_file
from ..profile import SCHEMA_VERSION, Profile, Unit

# ---- JSON ---------------------------------------------------------------------------------------------------


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema_version": profile.schema_version,
        "name": profile.name,
        "alpha": profile.alpha,
        "k": profile.k,
        "sites": list(profile.sites),
        "units": [{"layer": u.layer, "site": u.site, "dim": u.dim, "score": u.score} for u in profile.units],
    }
    data.update(_provenance(profile))
    return data


def profile_from_dict(data: Any) -> Profile:
    if not isinstance(data, dict):
        raise InputError("a profile must be a JSON object")
    for key in ("name", "alpha", "units"):
        if key not in data:
            raise InputError(f"profile is missing the field {key!r}")
    if not isinstance(data["units"], list):
        raise InputError("profile field 'units' must be a list")
    units = tuple(_unit_from_dict(index, item) for index, item in enumerate(data["units"]))
    return Profile(name=data["name"], alpha=data["alpha"], units=units, **_provenance_from(data),
                   schema_version=data.get("schema_version", SCHEMA_VERSION))


def profile_json(profile: Profile) -> str:
    return json.dumps(profile_to_dict(profile), indent=1) + "\n"


def write_profile(profile: Profile, path: str | Path) -> Path:
    """Write the profile's JSON file atomically."""
    atomic_write_text(Path(path), profile_json(profile))
    return Path(path)


def read_profile(path_or_text: str | Path) -> Profile:
    """A profile from a JSON file path or from JSON text."""
    if isinstance(path_or_text, str) and path_or_text.lstrip().startswith(("{", "[")):
        return profile_from_dict(load_json(path_or_text, "profile JSON"))
    return profile_from_dict(read_json_file(Path(path_or_text), "profile"))


def resolve(spec: Profile | str | Path, embedded: Mapping[str, Profile]) -> Profile:
    """The profile a user named, in this order:

    1. a `Profile` is itself;
    2. inline JSON text (starting with ``{``) is parsed;
    3. the exact name of a profile embedded in the model;
    4. a path to a profile JSON file.
    Otherwise InputError, listing the embedded names. A file that shares an embedded profile's name is
    reached with a path (``./polite``).
    """
    if isinstance(spec, Profile):
        return spec
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        return read_profile(spec)
    if isinstance(spec, str) and spec in embedded:
        return embedded[spec]
    if isinstance(spec, (str, Path)) and Path(spec).is_file():
        return read_profile(Path(spec))
    names = ", ".join(embedded) or "none"
    raise InputError(f"profile {str(spec)!r} is neither a profile file nor a profile embedded in the model "
                     f"(embedded: {names})")


def _unit_from_dict(index: int, item: Any) -> Unit:
    if not isinstance(item, dict):
        raise InputError(f"unit #{index} must be an object with layer, site, dim and score")
    missing = [key for key in ("layer", "site", "dim", "score") if key not in item]
    if missing:
        raise InputError(f"unit #{index} is missing {', '.join(missing)}")
    return Unit(layer=item["layer"], site=item["site"], dim=item["dim"], score=item["score"])


# ---- the compact embedded form ------------------------------------------------------------------------------


def encode_compact(profile: Profile) -> str:
    data: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "alpha": profile.alpha,
        "layer": [u.layer for u in profile.units],
        "site": "".join(sites.get(u.site).letter for u in profile.units),
        "dim": [u.dim for u in profile.units],
        "score": [u.score for u in profile.units],
        **_provenance(profile),
    }
    return json.dumps(data, separators=(",", ":"))


def decode_compact(name: str, text: str) -> Profile:
    """One embedded profile; InputError naming it when it is malformed."""
    try:
        data = load_json(str(text), f"embedded profile {name!r}")
        if not isinstance(data, dict):
            raise InputError("not a JSON object")
        layers, letters, dims, scores = (data.get(key) for key in ("layer", "site", "dim", "score"))
        if not (isinstance(layers, list) and isinstance(letters, str) and isinstance(dims, list)
                and isinstance(scores, list)):
            raise InputError("layer, dim and score must be lists and site a string of site letters")
        if not len(layers) == len(letters) == len(dims) == len(scores):
            raise InputError("unit arrays differ in length")
        units = tuple(Unit(layer, sites.by_letter(letter).name, dim, score)
                      for layer, letter, dim, score in zip(layers, letters, dims, scores))
        return Profile(name=name, alpha=data.get("alpha"), units=units, **_provenance_from(data),
                       schema_version=data.get("v"))
    except InputError as error:
        raise InputError(f"embedded profile {name!r} is malformed: {error}") from None


# ---- what both forms carry ----------------------------------------------------------------------------------


def _provenance(profile: Profile) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if profile.model is not None:
        data["model"] = fingerprint_to_dict(profile.model)
    if profile.n_pairs is not None:
        data["n_pairs"] = profile.n_pairs
    if profile.data_sha256 is not None:
        data["data_sha256"] = profile.data_sha256
    if profile.extra:
        data["extra"] = profile.extra
    if profile.calibration is not None:
        data["calibration"] = profile.calibration
    if profile.control is not None:
        data["control_vector"] = control_vector_to_dict(profile.control)
    return data


def _provenance_from(data: dict[str, Any]) -> dict[str, Any]:
    model = data.get("model")
    control = data.get("control_vector")
    return {
        "model": fingerprint_from_dict(model) if model is not None else None,
        "n_pairs": data.get("n_pairs"),
        "data_sha256": data.get("data_sha256"),
        "extra": data.get("extra") if data.get("extra") is not None else {},
        "calibration": data.get("calibration"),
        "control": control_vector_from_dict(control) if control is not None else None,
    }


def fingerprint_to_dict(fingerprint: ModelFingerprint) -> dict[str, Any]:
    return {"architecture": fingerprint.architecture, "n_layers": fingerprint.n_layers,
            "widths": dict(fingerprint.widths), "tensor_hash": fingerprint.tensor_hash}


def fingerprint_from_dict(data: Any) -> ModelFingerprint:
    why = ("it needs architecture (a string), n_layers (an integer), widths (site -> integer) and "
           "tensor_hash (a string)")
    if not isinstance(data, dict):
        raise InputError(f"profile field 'model' must be an object: {why}")
    architecture, n_layers = data.get("architecture"), data.get("n_layers")
    widths, digest = data.get("widths"), data.get("tensor_hash")
    valid = (isinstance(architecture, str) and _is_count(n_layers) and isinstance(digest, str)
             and isinstance(widths, dict) and all(isinstance(k, str) and _is_count(v) for k, v in widths.items()))
    if not valid:
        raise InputError(f"profile field 'model' is malformed: {why}")
    return ModelFingerprint(architecture, int(n_layers), {site: int(width) for site, width in widths.items()}, digest)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 31


def control_vector_to_dict(vector: ControlVector) -> dict[str, Any]:
    return {"model_hint": vector.model_hint, "n_pairs": vector.n_pairs,
            "layers": {str(layer): vector.directions[layer].astype(np.float32).tolist() for layer in vector.layers}}


def control_vector_from_dict(data: object) -> ControlVector:
    why = "a control vector is {'layers': {'<layer >= 1>': [numbers...]}, 'model_hint': ..., 'n_pairs': ...}"
    if not isinstance(data, dict) or not isinstance(data.get("layers"), dict) or not data["layers"]:
        raise InputError(f"malformed control vector: {why}")
    directions, width = {}, None
    for key, values in data["layers"].items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and 1 <= int(key) < 4096) \
                or not isinstance(values, list):
            raise InputError(f"malformed control vector layer {key!r}: {why}")
        if not all(is_number(v) for v in values):
            raise InputError(f"control vector layer {key}: values must be numbers")
        vector = np.array(values, dtype=np.float32)
        if not np.isfinite(vector).all() or (width is not None and vector.size != width) or vector.size == 0:
            raise InputError(f"control vector layer {key}: values must be finite, one width for every layer")
        width = vector.size
        directions[int(key)] = vector
    hint, n_pairs = data.get("model_hint", ""), data.get("n_pairs", 0)
    valid_count = isinstance(n_pairs, int) and not isinstance(n_pairs, bool) and 0 <= n_pairs < 1 << 62
    vector = ControlVector(directions, hint if isinstance(hint, str) else "", n_pairs if valid_count else 0)
    vector.check_values()
    return vector
