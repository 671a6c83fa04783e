"""Which thread decodes.

llama.cpp's CPU backend runs each decode on an OpenMP team, and libgomp keeps a team alive for every thread
that ever started one, until that thread ends. Once the teams' threads outnumber the cores, libgomp sleeps
(instead of spinning) at every barrier, and ggml waits at an OpenMP barrier after each op of the graph:
hundreds of sleeps and wake-ups per decode. Measured on 2 cores (`reports/bench_decode_threads.txt`): a thread
that decodes while another thread's team is alive decodes 2.5x slower (SmolLM2) and 1.4x slower (Gemma-3)
than a thread alone.

So a model is decoded from one thread for its whole life: the server's scheduler thread, a `DecodeThread` for
one-at-a-time completions, or the caller's own thread in scripts; a decode made for the constructor's sake (the
site probe) runs on a thread of its own that ends with it (`on_own_thread`), taking its team along.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


PR_SET_NAME = 15  # prctl option (linux/prctl.h)


def name_os_thread(name: str) -> None:
    """Name the calling thread where the OS shows it (`top -H`, /proc/<pid>/task/<tid>/comm; Linux, 15 bytes):
    Python 3.11 names only its own Thread objects. Threads it starts afterwards, such as the OpenMP team of its
    first decode, inherit the name, so a profile can tell the decoding threads from the HTTP ones."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode("utf-8")[:15], 0, 0, 0)


def on_own_thread(function: Callable[[], T]) -> T:
    """`function()` on a short-lived thread (its OpenMP team ends with it): its result, or its exception."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=run, name="austeer-probe")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class DecodeThread:
    """One thread that runs every call handed to it, in order, for async callers (the server's one-at-a-time
    completions). A call is not abandoned when its caller is cancelled: it runs to its end, as anyio's worker
    threads do."""

    def __init__(self, name: str = "austeer-decode") -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                                                               initializer=name_os_thread, initargs=(name,))

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        future = self._executor.submit(function, *args)
        return await anyio.to_thread.run_sync(future.result)  # a worker only waits; the call runs on ours

    async def iterate(self, items: Iterator[T]) -> AsyncIterator[T]:
        """The items of an iterator whose every step runs on this thread."""
        done = object()
        while True:
            item = await self.run(next, items, done)
            if item is done:
                return
            yield item

    def close(self) -> None:
        self._executor.shutdown(wait=True)
