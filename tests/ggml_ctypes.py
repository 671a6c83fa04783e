"""Real ggml tensors made through libggml-base's public C API (the library llama_cpp loaded)."""

from __future__ import annotations

import ctypes

import numpy as np

from austeer_gguf.engine import native

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


_lib = ctypes.CDLL(str(native.ggml_base_library()))
_lib.ggml_init.argtypes = [_InitParams]
_lib.ggml_init.restype = ctypes.c_void_p
_lib.ggml_free.argtypes = [ctypes.c_void_p]
_lib.ggml_new_tensor_2d.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_lib.ggml_new_tensor_2d.restype = ctypes.c_void_p
_lib.ggml_set_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_lib.ggml_set_name.restype = ctypes.c_void_p
_lib.ggml_transpose.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_lib.ggml_transpose.restype = ctypes.c_void_p
_lib.ggml_get_data.argtypes = [ctypes.c_void_p]
_lib.ggml_get_data.restype = ctypes.c_void_p
_lib.ggml_get_name.argtypes = [ctypes.c_void_p]
_lib.ggml_get_name.restype = ctypes.c_char_p

EvalCallback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p)


def tensor_name(tensor: int) -> str:
    return _lib.ggml_get_name(tensor).decode()


class GgmlContext:
    def __init__(self, mem_size: int = 1 << 20) -> None:
        self.ctx = _lib.ggml_init(_InitParams(mem_size, None, False))
        self.metadata_ctx = _lib.ggml_init(_InitParams(1 << 16, None, True))  # no_alloc: tensors without data

    def close(self) -> None:
        _lib.ggml_free(self.ctx)
        _lib.ggml_free(self.metadata_ctx)

    def tensor_without_data(self, name: str, rows: int, width: int) -> int:
        tensor = _lib.ggml_new_tensor_2d(self.metadata_ctx, GGML_TYPE_F32, width, rows)
        _lib.ggml_set_name(tensor, name.encode())
        return tensor

    def tensor(self, name: str, values: np.ndarray, ggml_type: int = GGML_TYPE_F32) -> int:
        """A [rows, width] numpy array as a ggml tensor of ne = (width, rows)."""
        rows, width = values.shape
        tensor = _lib.ggml_new_tensor_2d(self.ctx, ggml_type, width, rows)
        _lib.ggml_set_name(tensor, name.encode())
        dtype = np.float32 if ggml_type == GGML_TYPE_F32 else np.float16
        self.view(tensor, values.shape, dtype)[...] = values.astype(dtype)
        return tensor

    def transposed(self, tensor: int, name: str) -> int:
        view = _lib.ggml_transpose(self.ctx, tensor)
        _lib.ggml_set_name(view, name.encode())
        return view

    @staticmethod
    def view(tensor: int, shape: tuple[int, int], dtype=np.float32) -> np.ndarray:
        address = _lib.ggml_get_data(tensor)
        count = shape[0] * shape[1]
        buffer = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(address)
        return np.frombuffer(buffer, dtype=dtype).reshape(shape)
