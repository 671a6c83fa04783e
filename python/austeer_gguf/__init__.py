"""austeer-gguf: fine-grained activation steering (AUSteer) for GGUF models run by llama.cpp.

The package imports lazily (PEP 562): `import austeer_gguf` loads neither llama_cpp nor the native core;
they load when a runtime name such as `SteeredLlama` is first used. The pipeline, one subpackage a stage:

    ggufio        the GGUF file layer: fast layout scan, atomic rewrites, profiles in metadata, float copies
    localization  contrastive pairs -> captured activations -> reducers (momentum counts, mean differences)
    runtime       the native eval callback, the steering control, SteeredLlama
    exports       a profile as a LoRA adapter, or baked into the weights
    evaluation    tasks, metrics, sweeps against baselines, explain
    apps          the command line, the chat, the demo

with the shared vocabulary at the top: sites (the site registry), profile, control_vector, fingerprint,
models (built-in models), datasets, errors.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

_PUBLIC = {
    "SITES": "sites",
    "ModelShape": "sites",
    "Site": "sites",
    "Profile": "profile",
    "Unit": "profile",
    "ModelFingerprint": "fingerprint",
    "ControlVector": "control_vector",
    "InputError": "errors",
    "SteeredLlama": "runtime.steered_llama",
    "Steering": "runtime.steering",
    "SteeringSetting": "runtime.steering",
}
_SUBMODULES = ("sites", "profile", "fingerprint", "control_vector", "errors", "models", "datasets", "ggufio",
               "localization", "runtime", "exports", "evaluation", "apps")

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC, *_SUBMODULES])
