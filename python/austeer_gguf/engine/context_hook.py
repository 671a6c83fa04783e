"""Putting our eval callback into the context a `llama_cpp.Llama` creates.

llama-cpp-python has no parameter for `cb_eval`; `Llama.__init__` builds its context parameters by calling
`llama_cpp.llama_cpp.llama_context_default_params()` at run time. We wrap that function once, process-wide,
with a pass-through that changes the parameters only for the thread that asked, for one call. Plain
`Llama` objects created anywhere else (other threads included) get the untouched defaults.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import llama_cpp.llama_cpp as llama_capi


@dataclass
class _Request:
    callback: Any
    user_data: int
    overrides: dict[str, Any] = field(default_factory=dict)
    used: bool = False


_pending = threading.local()
_install_lock = threading.Lock()
_original_defaults = None


def _defaults_with_request() -> Any:
    params = _original_defaults()
    request: _Request | None = getattr(_pending, "request", None)
    if request is not None and not request.used:
        request.used = True
        params.cb_eval = request.callback
        params.cb_eval_user_data = ctypes.c_void_p(request.user_data)
        for name, value in request.overrides.items():
            setattr(params, name, value)
    return params


def _install() -> None:
    global _original_defaults
    with _install_lock:
        if _original_defaults is None:
            _original_defaults = llama_capi.llama_context_default_params
            llama_capi.llama_context_default_params = _defaults_with_request


def eval_callback_pointer(address: int) -> Any:
    return ctypes.cast(ctypes.c_void_p(address), llama_capi.ggml_backend_sched_eval_callback)


@contextlib.contextmanager
def callback_for_next_context(callback_address: int, user_data: int,
                              overrides: dict[str, Any] | None = None) -> Iterator[_Request]:
    """Within this block, the next context parameters built on this thread carry our callback."""
    _install()
    request = _Request(eval_callback_pointer(callback_address), user_data, dict(overrides or {}))
    if getattr(_pending, "request", None) is not None:
        raise RuntimeError("a steered context is already being created on this thread")
    _pending.request = request
    try:
        yield request
    finally:
        _pending.request = None


def installed_callback(params: Any) -> tuple[int, int]:
    """(callback address, user data) held by a context-parameters struct; zeros when none."""
    callback = ctypes.cast(params.cb_eval, ctypes.c_void_p).value or 0
    user_data = params.cb_eval_user_data or 0
    if isinstance(user_data, ctypes.c_void_p):
        user_data = user_data.value or 0
    return int(callback), int(user_data)
