"""Loading the native core against the libggml-base that llama_cpp has loaded."""

from __future__ import annotations

import functools
from pathlib import Path

import llama_cpp  # loads libllama and, with it, libggml-base

from .. import _native, sites


def _candidates() -> list[Path]:
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    found: list[Path] = []
    for pattern in ("libggml-base.so*", "libggml-base*.dylib", "ggml-base.dll"):
        found.extend(sorted(lib_dir.glob(pattern), key=lambda p: len(p.name)))
    if not found:
        raise RuntimeError(f"no libggml-base library in {lib_dir}: austeer-gguf needs llama-cpp-python==0.3.36 "
                           "built as shared libraries (the default pip build)")
    return found


@functools.cache
def ggml_base_library() -> Path:
    """The path under which the dynamic loader knows llama_cpp's libggml-base (it is opened with NOLOAD,
    so only the name the loader recorded, usually the soname, is accepted)."""
    errors = []
    for path in _candidates():
        try:
            _native.SteeringState(str(path), _site_prefixes(experts=False))
            return path
        except RuntimeError as error:
            errors.append(str(error))
    raise RuntimeError("none of llama_cpp's libggml-base files is the loaded one:\n" + "\n".join(errors))


def _site_prefixes(experts: bool) -> list[tuple[str, bool]]:
    return [(site.graph_tensor(experts), site.first_in_layer) for site in sites.all_sites()]


def new_state(experts: bool = False) -> _native.SteeringState:
    """A steering state that knows every registered site by its graph tensor in a dense model, or in one with
    expert FFNs; site code i is `sites.all_sites()[i]`."""
    return _native.SteeringState(str(ggml_base_library()), _site_prefixes(experts))


def callback_address() -> int:
    return int(_native.callback_address())


def is_skip(counter: str) -> bool:
    """Whether a native counter (cpp/steering.hpp's list) counts site tensors the callback had to leave alone."""
    return counter.startswith("skipped_") or counter == "errors"
