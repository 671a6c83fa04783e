"""austeer-gguf: fine-grained activation steering (AUSteer) for GGUF models run by llama.cpp.

The package imports lazily (PEP 562): `import austeer_gguf` loads neither llama_cpp nor the native core;
they load when a runtime name such as `SteeredLlama` is first used. The layers, bottom up (no import runs back
up them):

    (vocabulary)  values without I/O: sites (the site registry), profile, control_vector, fingerprint, setting
                  (a steering setting, the value each decode is handed), conversation (chat rendering), errors,
                  models (built-in models), datasets
    ggufio        the GGUF byte layer: fast layout scan, verified atomic rewrites, safe outputs, float copies
    formats       the values' file formats: profile JSON and its embedded form, control-vector GGUF, ModelFile
    engine        the native eval callback, a hooked llama_cpp.Llama, the one multi-sequence decoder, limits, RPC
    localization  contrastive pairs -> captured activations -> reducers (momentum counts, mean differences)
    runtime       SteeredLlama and the steering control users hold
    exports       a profile as a LoRA adapter, or baked into the weights
    evaluation    tasks, metrics, methods as objects, sweeps, the detox build, reports, explain
    apps          the command line, the chat, the demo, the server
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
    "SteeringSetting": "setting",
    "OFF": "setting",
    "HookedLlama": "engine.hooked",
    "SteeredLlama": "runtime.steered_llama",
    "Steering": "runtime.steering",
}
_SUBMODULES = ("sites", "profile", "fingerprint", "control_vector", "setting", "conversation", "errors", "models",
               "datasets", "ggufio", "formats", "engine", "localization", "runtime", "exports", "evaluation", "apps")

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
