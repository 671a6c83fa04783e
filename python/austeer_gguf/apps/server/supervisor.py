"""A server that survives its backends: `serve --rpc HOST:PORT` runs the model in a worker process and supervises it.

ggml aborts the process that holds a model when one of its RPC servers dies or answers nonsense mid-decode
(`ggml-rpc.cpp: Remote RPC server crashed or returned malformed response`), and no Python code can catch that.
So the model lives in a worker: an ordinary `serve` of the same model on a private loopback port. This
process answers the clients and forwards each request to the worker (streams pass through as they come). When
the worker dies, a request in flight gets an error (503, or an error event that ends its stream, so no client
takes a cut reply for a whole one), requests that arrive meanwhile get 503 with the reason, and a new worker is
started (with a growing pause while its backends stay away); the listening socket never closes.
"""

from __future__ import annotations

import collections
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ...engine.rpc import free_port

HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"}
START_SECONDS = 600.0  # a worker loads its model (over the network) within this
PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0)  # between restarts of a worker that keeps failing


class Supervisor:
    """Starts the worker (`serve ... --worker` on a loopback port), watches it, and starts a new one when it dies."""

    def __init__(self, worker_args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.worker_args = list(worker_args)
        self.env = env
        self.url: str | None = None  # where the live worker answers; None while there is none
        self.problem = "the model is loading"
        self.restarts = 0
        self._process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="austeer-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the worker (it drains its streams as on SIGTERM) and stop watching."""
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(60)
            if process.poll() is None:
                process.kill()
        self._thread.join(70)

    def wait_ready(self, timeout: float = START_SECONDS) -> bool:
        deadline = time.monotonic() + timeout
        while self.url is None and time.monotonic() < deadline and not self._stopping.is_set():
            time.sleep(0.1)
        return self.url is not None

    def _watch(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            self._run_worker()
            if self._stopping.is_set():
                return
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            self.restarts += 1
            pause = PAUSES[min(failures, len(PAUSES) - 1)]
            print(f"serve: the model's worker stopped ({self.problem}); starting a new one in {pause:g} s",
                  file=sys.stderr, flush=True)
            self._stopping.wait(pause)

    def _run_worker(self) -> None:
        """Start one worker, publish its URL once it answers, and return when it has exited."""
        port = free_port()
        command = [sys.executable, "-m", "austeer_gguf", "serve", *self.worker_args, "--host", "127.0.0.1",
                   "--port", str(port), "--worker"]
        tail: collections.deque[str] = collections.deque(maxlen=20)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env=self.env)
        self._process = process
        reader = threading.Thread(target=_keep_tail, args=(process.stderr, tail), daemon=True)
        reader.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_SECONDS
        while process.poll() is None and time.monotonic() < deadline and not self._stopping.is_set():
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    self.url, self.problem = url, ""
                    break
            time.sleep(0.2)
        if self.url is None and process.poll() is None:
            process.kill()  # it did not come up in time
        process.wait()
        reader.join(5)
        self.url = None
        errors = [line for line in tail if line.startswith("error:")]
        self.problem = (errors[-1][len("error:"):].strip() if errors else
                        f"it exited with status {process.returncode}" + (f": {tail[-1]}" if tail else ""))


def _keep_tail(stream, tail: collections.deque) -> None:
    for line in stream:
        tail.append(line.rstrip())
        print(f"[worker] {line.rstrip()}", file=sys.stderr, flush=True)


def create_app(supervisor: Supervisor) -> FastAPI:
    """Every route of the worker, forwarded; its failures turned into errors the clients can read."""
    app = FastAPI(title="austeer-gguf (supervised)")
    client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
    async def forward(path: str, request: Request) -> Response:
        url = supervisor.url
        if url is None:
            return _unavailable(supervisor.problem)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        upstream = client.build_request(request.method, f"{url}/{path}", params=request.query_params,
                                        headers=headers, content=await request.body())
        try:
            response = await client.send(upstream, stream=True)
        except httpx.HTTPError:
            return _unavailable(supervisor.problem or "the model's worker stopped")
        passed = {k: v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}
        if "text/event-stream" not in response.headers.get("content-type", ""):
            try:
                body = await response.aread()
            except httpx.HTTPError:
                return _unavailable(supervisor.problem or "the model's worker stopped")
            finally:
                await response.aclose()
            return Response(body, status_code=response.status_code, headers=passed)
        return StreamingResponse(_events(response, supervisor), status_code=response.status_code, headers=passed)

    return app


async def _events(response: httpx.Response, supervisor: Supervisor) -> AsyncIterator[bytes]:
    """A stream passed through; a worker that dies mid-stream ends it with an error event."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError:
        await anyio.sleep(0.5)  # let the supervisor read why the worker stopped
        message = (f"the model's backend failed mid-reply ({supervisor.problem or 'its worker stopped'}): this "
                   "reply was cut short; the server is restarting it, send the request again")
        yield f"\ndata: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n".encode()
    finally:
        await response.aclose()


def _unavailable(problem: str) -> JSONResponse:
    return JSONResponse({"error": {"message": f"the model is not available ({problem}); the server is starting it "
                                              "again: try again in a moment", "type": "server_error", "param": None,
                                   "code": None}}, status_code=503, headers={"Retry-After": "5"})


def serve_supervised(worker_args: Sequence[str], *, host: str, port: int, env: dict[str, str] | None = None) -> None:
    import uvicorn

    supervisor = Supervisor(worker_args, env=env).start()
    try:
        uvicorn.run(create_app(supervisor), host=host, port=port, log_level="warning")
    finally:
        supervisor.stop()
