"""A real `python -m austeer_gguf serve` process on loopback for the tests, stopped when they end."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from austeer_gguf.engine.rpc import free_port


@contextlib.contextmanager
def running_server(model: Path, *args: str, timeout: float = 120.0) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "austeer_gguf", "serve", str(model), "--port", str(port),
                                "--threads", "2", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}: {process.stdout.read()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer within the time allowed")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
