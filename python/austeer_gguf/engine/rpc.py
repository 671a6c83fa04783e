"""llama.cpp's RPC backend: steering a model whose layers live on other machines (or other processes).

`add_servers(["host:port", ...])` does what llama.cpp's `--rpc` does: finds the "RPC" backend registry, gets
`ggml_backend_rpc_add_server` through it, and registers each server's devices. The model loader then sees
them as GPU-type devices, and layers offloaded to them (`n_gpu_layers`) live in non-host buffers: the path
our callback takes for every CUDA and Metal build (`ggml_backend_tensor_get/_set`).

Registration is process-wide, as in llama.cpp: every model loaded afterwards in this process sees these
devices. ggml aborts the process when a registered server cannot be reached, so each server is probed
first and an unreachable one is refused with a message instead. The RPC protocol is not secure: bind
`ggml-rpc-server` to loopback or a trusted private network only.

`RpcServer()` runs the `ggml-rpc-server` that scripts/setup builds from the same llama.cpp sources, on loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import InputError

_registered: set[str] = set()
_lock = threading.Lock()


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = str(endpoint).rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InputError(f"RPC server {endpoint!r} is not HOST:PORT (for example 127.0.0.1:50052)")
    return host, int(port)


def probe(endpoint: str, timeout: float = 3.0) -> None:
    """InputError unless something accepts connections at `endpoint`."""
    host, port = parse_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as error:
        raise InputError(f"cannot reach the RPC server at {endpoint} ({error.strerror or error}): start "
                         f"`ggml-rpc-server -H {host} -p {port}` there first") from None


# ggml-rpc's handshake (vendored ggml/src/ggml-rpc): | command 14 (1 byte) | size (8 bytes) | connection caps
# (24 bytes) |, answered by | size (8 bytes) = 28 | major, minor, patch, padding (4 bytes) | caps (24 bytes) |.
HELLO, CAPS_SIZE, PROTOCOL_MAJOR, PROTOCOL_MINOR = 14, 24, 7, 0
HANDSHAKE_SECONDS = 5.0


def handshake(endpoint: str, timeout: float = HANDSHAKE_SECONDS) -> None:
    """InputError unless a ggml-rpc server of this protocol answers ggml's HELLO at `endpoint` within `timeout`:
    ggml itself would hang on a listener that never answers, and abort the process on one that answers
    nonsense. (A ggml-rpc server serves one client at a time: one busy with another client does not answer.)"""
    host, port = parse_endpoint(endpoint)
    probe(endpoint)
    request = bytes([HELLO]) + struct.pack("<Q", CAPS_SIZE) + bytes(CAPS_SIZE)
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            connection.settimeout(timeout)
            connection.sendall(request)
            answer = _receive(connection, 8 + 4 + CAPS_SIZE, time.monotonic() + timeout)
    except TimeoutError:
        raise InputError(f"the RPC server at {endpoint} did not answer within {timeout:g} s (busy with another "
                         "client, or not a ggml-rpc-server): start a free ggml-rpc-server there") from None
    except OSError as error:
        raise InputError(f"the RPC server at {endpoint} closed the connection ({error.strerror or error}): is it "
                         "a ggml-rpc-server of llama.cpp?") from None
    size, (major, minor) = struct.unpack_from("<Q", answer)[0], answer[8:10]
    if size != 4 + CAPS_SIZE or major != PROTOCOL_MAJOR or minor > PROTOCOL_MINOR:
        raise InputError(f"the server at {endpoint} does not speak ggml-rpc protocol {PROTOCOL_MAJOR}.{PROTOCOL_MINOR} "
                         "(another program, or a ggml-rpc-server of another llama.cpp): start the ggml-rpc-server "
                         "scripts/setup builds")


def _receive(connection: socket.socket, size: int, deadline: float) -> bytes:
    data = b""
    while len(data) < size:
        if time.monotonic() > deadline:
            raise TimeoutError
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError(0, "connection closed before the answer")
        data += chunk
    return data


@functools.cache
def _ggml() -> ctypes.CDLL:
    import llama_cpp

    # The wheel holds libggml.so, .so.0 and .so.0.x as separate files: open the one the loader already has
    # (it holds the backend registry the model loader reads), never a second copy.
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    lib = None
    for candidate in sorted([*lib_dir.glob("libggml.so*"), *lib_dir.glob("libggml.*dylib")]):
        with contextlib.suppress(OSError):
            lib = ctypes.CDLL(str(candidate), mode=os.RTLD_NOLOAD | ctypes.RTLD_GLOBAL)
            break
    if lib is None:
        raise InputError(f"llama_cpp has not loaded a libggml from {lib_dir}: this llama-cpp-python is not the "
                         "shared-library build austeer-gguf supports")
    lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    lib.ggml_backend_register.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_register.restype = None
    lib.ggml_backend_load_all.argtypes = []
    lib.ggml_backend_load_all.restype = None
    return lib


def add_servers(endpoints: list[str] | tuple[str, ...]) -> list[str]:
    """Register the devices of these RPC servers with ggml (once per endpoint per process)."""
    if isinstance(endpoints, str) or not endpoints:
        raise InputError(f"rpc_servers takes a list of HOST:PORT strings, got {endpoints!r} (write [{endpoints!r}])"
                         if isinstance(endpoints, str) else "rpc_servers takes a list of HOST:PORT strings")
    if len(endpoints) > 16:
        raise InputError("at most 16 RPC servers are supported (GGML_RPC_MAX_SERVERS)")
    with _lock:
        fresh = [endpoint for endpoint in endpoints if endpoint not in _registered]
        for endpoint in fresh:
            handshake(endpoint)
        if not fresh:
            return list(endpoints)
        lib = _ggml()
        lib.ggml_backend_load_all()
        registry = lib.ggml_backend_reg_by_name(b"RPC")
        if not registry:
            raise InputError("this llama-cpp-python was built without the RPC backend: rebuild it with "
                             "CMAKE_ARGS=-DGGML_RPC=ON (scripts/setup does)")
        address = lib.ggml_backend_reg_get_proc_address(registry, b"ggml_backend_rpc_add_server")
        if not address:
            raise InputError("the RPC backend of this llama-cpp-python has no ggml_backend_rpc_add_server")
        add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(address)
        for endpoint in fresh:
            server = add_server(endpoint.encode())
            if not server:
                raise InputError(f"the RPC server at {endpoint} offers no devices")
            lib.ggml_backend_register(server)
            _registered.add(endpoint)
    return list(endpoints)


def check_registered() -> None:
    """Before a model load: every server registered in this process must still answer, or ggml aborts."""
    with _lock:
        for endpoint in sorted(_registered):
            try:
                probe(endpoint, timeout=1.0)
            except InputError:
                raise InputError(f"the RPC server {endpoint}, registered earlier in this process, is gone, and "
                                 "llama.cpp would abort loading any model now: restart it there, or load the "
                                 "model in a new process") from None


def server_program() -> Path:
    """The ggml-rpc-server that scripts/setup builds (linked into the virtual environment's bin)."""
    beside = Path(sys.executable).parent / "ggml-rpc-server"
    found = beside if beside.exists() else shutil.which("ggml-rpc-server")
    if not found:
        raise InputError("ggml-rpc-server is not installed: run scripts/setup, which builds it from the same "
                         "llama.cpp sources as llama-cpp-python")
    return Path(found)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RpcServer:
    """A `ggml-rpc-server` process on loopback, stopped when the block ends (or with `stop`)."""

    def __init__(self, port: int | None = None, *, threads: int = 1, host: str = "127.0.0.1",
                 timeout: float = 30.0) -> None:
        self.host, self.port = host, port or free_port()
        self.process = subprocess.Popen(
            [str(server_program()), "-H", host, "-p", str(self.port), "-t", str(threads)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ggml-rpc-server exited with status {self.process.returncode} at start")
            with contextlib.suppress(OSError), socket.create_connection((host, self.port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ggml-rpc-server did not listen on {self.endpoint} within {timeout:.0f} s")
            time.sleep(0.05)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()

    def __enter__(self) -> RpcServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
