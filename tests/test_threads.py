"""Which thread decodes (engine/threads.py): constructing a model leaves no OpenMP team on the caller's thread, and
the server's one-at-a-time completions all run on one thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest

from austeer_gguf.engine.threads import DecodeThread, on_own_thread

# Thread counts of a fresh process: an OpenMP team shows as a worker thread beside the one that started it.
COUNT_THREADS = """
import os, sys, time, llama_cpp
from austeer_gguf.engine.hooked import HookedLlama
count = lambda: len(os.listdir("/proc/self/task"))
before = count()
llm = HookedLlama(sys.argv[1], n_ctx=64, n_threads=2, n_threads_batch=2, verbose=False)
# The probe thread's team workers exit after it ends, asynchronously: wait (bounded) for them to go.
deadline = time.monotonic() + 10
while count() > before and time.monotonic() < deadline:
    time.sleep(0.05)
constructed = count()
token = (llama_cpp.llama_token * 1)(1)
assert llama_cpp.llama_decode(llm.ctx, llama_cpp.llama_batch_get_one(token, 1)) == 0
print(before, constructed, count())
"""


def test_constructing_a_model_leaves_no_openmp_team_on_the_callers_thread(tiny_f32):
    result = subprocess.run([sys.executable, "-c", COUNT_THREADS, str(tiny_f32)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    before, constructed, decoded = map(int, result.stdout.split())
    assert constructed == before  # the site probe decoded on a thread that ended, its team with it
    assert decoded == before + 1  # a decode on this thread starts a team: the count sees one


def test_on_own_thread_returns_the_result_and_raises_the_error_on_the_callers_side():
    ran_on = []

    def work() -> int:
        ran_on.append(threading.current_thread())
        return 7

    assert on_own_thread(work) == 7
    assert ran_on[0] is not threading.current_thread() and not ran_on[0].is_alive()

    def fail() -> None:
        raise ValueError("probe failed")

    with pytest.raises(ValueError, match="probe failed"):
        on_own_thread(fail)


def test_a_decode_thread_runs_every_call_and_every_step_of_an_iterator_on_one_thread():
    decoding = DecodeThread()
    seen: list[int] = []

    def step(value: int) -> int:
        seen.append(threading.get_ident())
        return value * 2

    def numbers():
        for value in range(3):
            seen.append(threading.get_ident())
            yield value

    def fail() -> None:
        raise RuntimeError("decode failed")

    async def main() -> tuple[list[int], list[int]]:
        doubled = [await decoding.run(step, value) for value in range(4)]
        streamed = [value async for value in decoding.iterate(numbers())]
        with pytest.raises(RuntimeError, match="decode failed"):
            await decoding.run(fail)
        return doubled, streamed

    try:
        assert anyio.run(main) == ([0, 2, 4, 6], [0, 1, 2])
    finally:
        decoding.close()
    assert len(seen) == 7 and len(set(seen)) == 1 and seen[0] != threading.get_ident()


def os_threads_named(name: str) -> set[int]:
    named = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except FileNotFoundError:  # the thread ended after the listing (the OpenMP workers of closed models do)
            continue
        if comm == name:
            named.add(int(tid))
    return named


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names are read from Linux's /proc")
def test_the_decoding_threads_carry_their_name_where_the_os_shows_it(tiny_f32):
    from austeer_gguf.engine.scheduler import Job, Sampling, Scheduler
    from austeer_gguf.runtime.steered_llama import SteeredLlama
    from austeer_gguf.setting import OFF

    decoding = DecodeThread()
    assert anyio.run(decoding.run, lambda: Path("/proc/thread-self/comm").read_text().strip()) == "austeer-decode"
    decoding.close()
    before = os_threads_named("austeer-decode")  # a closed DecodeThread's thread may still be exiting
    llm = SteeredLlama(tiny_f32, n_ctx=512, sequences=2, verbose=False, n_threads=2, n_threads_batch=2)
    scheduler = Scheduler(llm, seed=0).start()
    try:
        job = scheduler.submit(Job(llm.tokenize(b"the cat is"), OFF, Sampling(temperature=0.0), max_tokens=2))
        assert list(job.stream())
        # The scheduler's thread and the OpenMP team its first decode started.
        new = os_threads_named("austeer-decode") - before
        assert scheduler._thread.native_id in new and len(new) == 2
    finally:
        scheduler.close()
