"""Profiles stored in a GGUF's metadata.

llama.cpp's metadata API (`llama_model_meta_val_str`) shows scalar and string keys only (arrays are
skipped, floats are printed with six decimals), so every profile is one string key holding the compact,
versioned JSON form (`profiles.encode_compact`) that both gguf-py and llama.cpp read back exactly:

    austeer.version                 uint32  format version (1)
    austeer.profiles                string  profile names, comma separated, in embedding order
    austeer.profile.<name>          string  the compact form of one profile
    austeer.baked                   string  (written by `bake`) what was folded into the weights

A profile that does not decode is reported as broken, never a reason to refuse the model: the valid ones
stay usable, and `strip` can remove the broken one by name. `embed_profiles` checks every profile against
the model before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..ggufio.atomic import locked_folder
from ..ggufio.layout import GgufLayout
from ..ggufio.rewrite import MetadataValue, rewrite
from ..profile import Profile
from .model_file import ModelFile
from .profiles import decode_compact, encode_compact

FORMAT_VERSION = 1
VERSION_KEY = "austeer.version"
NAMES_KEY = "austeer.profiles"
BAKED_KEY = "austeer.baked"
PROFILE_KEY_PREFIX = "austeer.profile."
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def profile_key(name: str) -> str:
    return PROFILE_KEY_PREFIX + name


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InputError(f"profile name {name!r} cannot be embedded: use 1-64 letters, digits, '_' or '-', "
                         "starting with a letter or digit (pass --name to choose one)")
    return name


@dataclass
class Embedded:
    """The profiles of one file: the valid ones, and the broken ones with the reason."""

    profiles: dict[str, Profile] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # the raw text of every profile present, broken ones too

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys([*self.texts, *self.broken]))


def embedded_profiles(metadata: Mapping[str, Any]) -> Embedded:
    """Profiles from string metadata, as llama.cpp's API or `ggufio.layout.read_fields` returns it."""
    found = Embedded()
    if NAMES_KEY not in metadata:
        return found
    version = metadata.get(VERSION_KEY, FORMAT_VERSION)
    names = [name for name in str(metadata[NAMES_KEY]).split(",") if name]
    for name in names:
        text = metadata.get(profile_key(name))
        if text is not None:
            found.texts[name] = str(text)
        if str(version) != str(FORMAT_VERSION):
            found.broken[name] = (f"format version {version}; this austeer-gguf reads version {FORMAT_VERSION}")
        elif text is None:
            found.broken[name] = f"listed, but its key {profile_key(name)} is missing"
        else:
            try:
                found.profiles[name] = decode_compact(name, str(text))
            except (ValueError, TypeError, OverflowError, KeyError, RecursionError) as error:
                # A profile that does not decode never stops the model from loading: it is reported broken.
                found.broken[name] = str(error)
    return found


def read_profiles(path: str | Path) -> dict[str, Profile]:
    """The valid profiles embedded in a GGUF file."""
    return embedded_profiles(ModelFile.open(path).fields).profiles


# ---- writing ---------------------------------------------------------------------------------------------


def embed_profiles(source: str | Path | ModelFile, profiles: list[Profile], target: str | Path, *,
                   allow_model_mismatch: bool = False) -> Path:
    """Write `target` as `source` with these profiles added (a profile of the same name is replaced). Every
    profile is checked against the model first (layers, dims, fingerprint; `allow_model_mismatch` skips the
    fingerprint), so nothing is written for a profile that does not fit."""
    names = [profile.name for profile in profiles]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"two profiles are named {', '.join(repeated)}: give each its own name (--name)")
    source = source.path if isinstance(source, ModelFile) else Path(source)
    with locked_folder(Path(target).parent):  # scanned and rewritten in one turn (see ggufio.rewrite)
        model = ModelFile.open(source)
        for profile in profiles:
            check_name(profile.name)
            profile.check_model(model.shape, model.fingerprint, allow_mismatch=allow_model_mismatch)
        texts = embedded_profiles(model.fields).texts
        for profile in profiles:
            texts[profile.name] = encode_compact(profile)
        return _rewrite(model.layout, Path(target), texts)


def strip_profiles(source: str | Path, target: str | Path, names: list[str] | None = None) -> Path:
    """Write `target` as `source` without the named profiles (all of them when names is None); broken
    profiles can be removed by name too."""
    with locked_folder(Path(target).parent):
        model = ModelFile.open(source)
        found = embedded_profiles(model.fields)
        if names is not None:
            unknown = [name for name in names if name not in found.names]
            if unknown:
                raise InputError(f"no embedded profile named {', '.join(unknown)}; the model has "
                                 f"{', '.join(found.names) or 'none'}")
            kept = {name: text for name, text in found.texts.items() if name not in names}
        else:
            kept = {}
        return _rewrite(model.layout, Path(target), kept)


def _profile_keys(texts: dict[str, str]) -> dict[str, MetadataValue]:
    if not texts:
        return {}
    keys: dict[str, MetadataValue] = {VERSION_KEY: FORMAT_VERSION, NAMES_KEY: ",".join(texts)}
    for name, text in texts.items():
        keys[profile_key(name)] = text
    return keys


def _is_profile_key(name: str) -> bool:
    return name in (VERSION_KEY, NAMES_KEY) or name.startswith(PROFILE_KEY_PREFIX)


def _rewrite(layout: GgufLayout, target: Path, texts: dict[str, str]) -> Path:
    """Copy the file to `target` with its austeer profile keys replaced by these profiles."""
    return rewrite(layout, target, drop_key=_is_profile_key, new_keys=_profile_keys(texts))
