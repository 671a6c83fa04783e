"""Profiles stored in a GGUF's metadata.

llama.cpp's metadata API (`llama_model_meta_val_str`) shows scalar and string keys only (arrays are
skipped, floats are printed with six decimals), so every profile is one string key holding a compact,
versioned JSON encoding that both gguf-py and llama.cpp read back exactly:

    austeer.version                 uint32  format version (1)
    austeer.profiles                string  profile names, comma separated, in embedding order
    austeer.profile.<name>          string  {"v":1,"alpha":..,"layer":[..],"site":"aaf..","dim":[..],
                                             "score":[..],"model":{..},"n_pairs":..,"data_sha256":..}
    austeer.baked                   string  (written by `bake`) what was folded into the weights
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .fingerprint import ModelFingerprint
from .gguf_file import GgufLayout, scan
from .gguf_write import MetadataValue, rewrite
from .profile import SCHEMA_VERSION, Profile, Unit

FORMAT_VERSION = 1
PREFIX = "austeer."
VERSION_KEY = "austeer.version"
NAMES_KEY = "austeer.profiles"
BAKED_KEY = "austeer.baked"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_SITE_LETTERS = {"attn": "a", "ffn": "f", "layer": "l"}
_LETTER_SITES = {letter: site for site, letter in _SITE_LETTERS.items()}


def profile_key(name: str) -> str:
    return f"austeer.profile.{name}"


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"profile name {name!r} cannot be embedded: use 1-64 letters, digits, '_' or '-', "
                         "starting with a letter or digit (pass --name to choose one)")
    return name


def encode_profile(profile: Profile) -> str:
    data: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "alpha": profile.alpha,
        "layer": [u.layer for u in profile.units],
        "site": "".join(_SITE_LETTERS[u.site] for u in profile.units),
        "dim": [u.dim for u in profile.units],
        "score": [u.score for u in profile.units],
    }
    if profile.model is not None:
        data["model"] = profile.model.to_dict()
    if profile.n_pairs is not None:
        data["n_pairs"] = profile.n_pairs
    if profile.data_sha256 is not None:
        data["data_sha256"] = profile.data_sha256
    if profile.extra:
        data["extra"] = profile.extra
    return json.dumps(data, separators=(",", ":"))


def decode_profile(name: str, text: str) -> Profile:
    try:
        data = json.loads(text)
        layers, sites, dims, scores = data["layer"], data["site"], data["dim"], data["score"]
        if not (len(layers) == len(sites) == len(dims) == len(scores)):
            raise ValueError("unit arrays differ in length")
        units = tuple(Unit(int(layer), _LETTER_SITES[letter], int(dim), float(score))
                      for layer, letter, dim, score in zip(layers, sites, dims, scores))
        return Profile(
            name=name,
            alpha=float(data["alpha"]),
            units=units,
            model=ModelFingerprint.from_dict(data["model"]) if "model" in data else None,
            n_pairs=data.get("n_pairs"),
            data_sha256=data.get("data_sha256"),
            extra=dict(data.get("extra") or {}),
            schema_version=int(data["v"]),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"embedded profile {name!r} is malformed: {error}") from None


def profiles_from_metadata(metadata: dict[str, Any]) -> dict[str, Profile]:
    """Profiles from string metadata, as llama.cpp's API or `gguf_file.read_fields` returns it."""
    if NAMES_KEY not in metadata:
        return {}
    version = int(metadata.get(VERSION_KEY, FORMAT_VERSION))
    if version != FORMAT_VERSION:
        raise ValueError(f"this model's embedded profiles use format version {version}; this austeer-gguf "
                         f"reads version {FORMAT_VERSION}")
    names = [name for name in str(metadata[NAMES_KEY]).split(",") if name]
    profiles = {}
    for name in names:
        text = metadata.get(profile_key(name))
        if text is None:
            raise ValueError(f"embedded profile {name!r} is listed but its key {profile_key(name)} is missing")
        profiles[name] = decode_profile(name, str(text))
    return profiles


def read_profiles(path: str | Path) -> dict[str, Profile]:
    """The profiles embedded in a GGUF file."""
    return profiles_from_metadata(scan(path).values())


# ---- writing ---------------------------------------------------------------------------------------------


def embed_profiles(source: str | Path, profiles: list[Profile], target: str | Path) -> Path:
    """Write `target` as `source` with these profiles added (a profile of the same name is replaced)."""
    layout = scan(source)
    existing = profiles_from_metadata(layout.values())
    for profile in profiles:
        check_name(profile.name)
        existing[profile.name] = profile
    return _rewrite(layout, Path(target), _profile_keys(existing))


def strip_profiles(source: str | Path, target: str | Path, names: list[str] | None = None) -> Path:
    """Write `target` as `source` without the named profiles (all of them when names is None)."""
    layout = scan(source)
    existing = profiles_from_metadata(layout.values())
    if names is not None:
        unknown = [name for name in names if name not in existing]
        if unknown:
            raise ValueError(f"no embedded profile named {', '.join(unknown)}; the model has "
                             f"{', '.join(existing) or 'none'}")
        kept = {name: profile for name, profile in existing.items() if name not in names}
    else:
        kept = {}
    return _rewrite(layout, Path(target), _profile_keys(kept))


def _profile_keys(profiles: dict[str, Profile]) -> dict[str, MetadataValue]:
    if not profiles:
        return {}
    keys: dict[str, MetadataValue] = {VERSION_KEY: FORMAT_VERSION, NAMES_KEY: ",".join(profiles)}
    for name, profile in profiles.items():
        keys[profile_key(name)] = encode_profile(profile)
    return keys


def _is_profile_key(name: str) -> bool:
    return name in (VERSION_KEY, NAMES_KEY) or name.startswith("austeer.profile.")


def _rewrite(layout: GgufLayout, target: Path, profile_keys: dict[str, MetadataValue]) -> Path:
    """Copy the file to `target` with its austeer profile keys replaced by `profile_keys`."""
    return rewrite(layout, target, drop_key=_is_profile_key, new_keys=profile_keys)
