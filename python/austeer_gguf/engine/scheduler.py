"""Continuous batching: many requests, each with its own steering setting and sampling, decoded together.

A request (`Job`: prompt tokens, a `SteeringSetting`, `Sampling`, a token limit and stop strings) joins the
running batch at the next decode step and leaves when it ends. Each step is one llama_decode: one token for
every generating sequence, then as many prompt tokens of newly admitted sequences as the batch has room for (a
long prompt is split over steps, so the others keep streaming). Every row is steered as its own sequence's
setting says (`HookedLlama.install_batch`; prompt positions as `setting.for_prompt()`). Sampling is llama.cpp's
own: one sampler chain per sequence, built in the order llama-cpp-python's `Llama._init_sampler` builds it
(penalties, grammar, then greedy, mirostat, or top-k, typical, top-p, min-p, temperature and a seeded draw) and
sampled from that sequence's output row; a logit bias, and the end-of-generation ban of `min_tokens`, edit that
row's logits first, as llama-cpp-python's logits processors do.

Each sequence id is a slot (the context's `sequences`: on one unified KV cache, or on a KV stream per slot,
llama-server's layout, where each row attends over its own slot's cells only), with at most n_ctx / slots cells
of its own. A slot keeps what it computed when its request ends. A request's prompt positions that some slot's
cells already hold, computed under the request's prompt setting (`KvRecord`), are not computed again: on a
unified cache the request's slot shares those cells (a cell belongs to several sequences), whichever slot holds
them, running or not; on KV streams only a free slot's own cells serve, and a request takes the free slot with
the longest such prefix. On a unified cache, the context's sequence ids beyond the slots (`slots=`) hold the
prompts of slots taken by other requests (parked, least recently used first out), as long as the running
requests leave the cache room for them: llama-server keeps such prompts in a RAM cache.

Threading: one thread (the loop, `start`) decodes; `submit` and `cancel` may be called from any thread; a job's
events are read by whoever submitted it (`Job.events`, a queue). A job that is cancelled (a client that went
away) leaves the batch at the next step.
"""

from __future__ import annotations

import queue
import random
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from ..errors import InputError
from ..setting import SteeringSetting
from .decoder import Decoder, common_prefix
from .hooked import HookedLlama
from .kv import KvRecord
from .threads import name_os_thread

PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size, the window of its repetition penalties


@dataclass(frozen=True)
class Sampling:
    """How a sequence's tokens are drawn (llama-cpp-python's names and defaults)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    grammar: str | None = None  # GBNF with a `root` rule
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    mirostat: int = 0  # 1 or 2: llama.cpp's mirostat samplers in place of top-k .. temperature
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1

    def chain(self, llm: HookedLlama, seed: int):
        """A llama.cpp sampler chain, in llama-cpp-python's order (free it with llama_sampler_free)."""
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

        def add(sampler) -> None:
            llama_cpp.llama_sampler_chain_add(chain, sampler)

        add(llama_cpp.llama_sampler_init_penalties(llm.n_vocab(), PENALTY_LAST_N, self.repeat_penalty,
                                                   self.frequency_penalty, self.presence_penalty))
        if self.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(llama_cpp.llama_model_get_vocab(llm.model),
                                                           self.grammar.encode("utf-8"), b"root")
            if not grammar:
                llama_cpp.llama_sampler_free(chain)
                raise InputError("the grammar does not parse as GBNF with a `root` rule: fix it or leave it out")
            add(grammar)
        if self.temperature == 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
        elif self.mirostat == 1:
            add(llama_cpp.llama_sampler_init_mirostat(llm.n_vocab(), seed, self.mirostat_tau, self.mirostat_eta, 100))
        elif self.mirostat == 2:
            add(llama_cpp.llama_sampler_init_mirostat_v2(seed, self.mirostat_tau, self.mirostat_eta))
        else:
            add(llama_cpp.llama_sampler_init_top_k(self.top_k))
            add(llama_cpp.llama_sampler_init_typical(self.typical_p, 1))
            add(llama_cpp.llama_sampler_init_top_p(self.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(self.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(self.temperature))
            add(llama_cpp.llama_sampler_init_dist(seed))
        return chain


@dataclass(frozen=True)
class Text:
    """Text the sequence produced since the last event (held back while it could be the start of a stop)."""

    text: str


@dataclass(frozen=True)
class Done:
    finish_reason: str  # "stop" (end of generation or a stop string) or "length"
    prompt_tokens: int
    tokens: tuple[int, ...]  # the completion's tokens
    reused: int = 0  # prompt tokens whose cells a slot kept from an earlier request (not computed again)
    text: str = ""  # the completion's text (up to a stop string), for a job that is not streamed

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class Failed:
    message: str


@dataclass(eq=False)
class Job:
    """One request: its prompt, setting, sampling, limit and stop strings; its events arrive in `events`."""

    tokens: list[int]
    setting: SteeringSetting
    sampling: Sampling = Sampling()
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    streamed: bool = True  # Text events as the text grows; else the whole text in Done only
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def stream(self) -> Iterator[Text | Done | Failed]:
        """The job's events until it ends (blocking)."""
        while True:
            event = self.events.get()
            yield event
            if not isinstance(event, Text):
                return


@dataclass(eq=False)
class _Slot:
    """A sequence id of the context, and what its cells hold."""

    seq: int
    cached: list[int] = field(default_factory=list)  # the tokens its cells hold, in order
    record: KvRecord = KvRecord()
    job: Job | None = None
    chain: object = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to decode
    position: int = 0  # the position of the next token to decode
    generated: list[int] = field(default_factory=list)
    reused: int = 0  # prompt tokens taken from the cells of the slot's earlier request
    emitted: int = 0  # characters of the text already sent
    row: int | None = None  # its output row in the step just decoded
    used: int = 0  # when its cells last served or were parked (parked prompts go least recently used first)


class Scheduler:
    """Continuous batching over a hooked model whose context holds several sequences (`HookedLlama(...,
    sequences=N)`): N slots."""

    def __init__(self, llm: HookedLlama, seed: int | None = None, slots: int | None = None) -> None:
        self.llm = llm
        self.decoder = Decoder(llm)
        n_ids = self.decoder.max_sequences
        self.slots = [_Slot(seq) for seq in range(min(slots or n_ids, n_ids))]
        # The sequence ids beyond the slots (a unified cache only) hold prompts that slots computed and then needed
        # their cells for another request (`_park`): cells that nothing decodes, kept while the cache has room.
        self.parked = [_Slot(seq) for seq in range(len(self.slots), n_ids)] if self.decoder.shares_cells else []
        self.cells_per_sequence = self.decoder.n_ctx // len(self.slots)  # each slot's share of the cache
        self._memory = llama_cpp.llama_get_memory(llm.ctx)
        self._waiting: deque[Job] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._seeds = random.Random(seed)
        self._thread: threading.Thread | None = None
        self.steps = 0  # decodes run (for tests and benchmarks)
        self._clock = 0  # counts the slots' starts, for `used`

    # ---- what other threads call ------------------------------------------------------------------------

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._loop, name="austeer-scheduler", daemon=True)
        self._thread.start()
        return self

    def submit(self, job: Job) -> Job:
        """Queue a job (it joins the batch at the next step); InputError when it cannot fit a sequence."""
        if not job.tokens:
            raise InputError("the prompt is empty")
        if len(job.tokens) >= self.cells_per_sequence:
            raise InputError(f"Requested tokens ({len(job.tokens)}) exceed context window of "
                             f"{self.cells_per_sequence}: shorten the prompt")
        with self._wake:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._waiting.append(job)
            self._wake.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The job leaves the batch at the next step, without a further event."""
        job.cancelled.set()
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        """Stop the loop: jobs still running or waiting get a Failed event."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        for job in list(self._waiting) + [slot.job for slot in self.slots if slot.job is not None]:
            job.events.put(Failed("the server is shutting down"))
        for slot in self.slots:
            self._release(slot)
        self.decoder.close()

    @property
    def busy(self) -> int:
        return sum(slot.job is not None for slot in self.slots)

    # ---- the loop -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        name_os_thread("austeer-decode")
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not any(s.job for s in self.slots):
                    self._wake.wait()
                if self._closed:
                    return
                self._admit()
            try:
                self._step()
            except Exception as error:  # a failed decode ends the jobs in it; the loop goes on
                for slot in self.slots:
                    if slot.job is not None:
                        slot.job.events.put(Failed(f"decoding failed: {error}"))
                        self._release(slot, keep_cells=False)

    def _admit(self) -> None:
        """Waiting jobs into free slots (called with the lock held); cancelled ones are dropped."""
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                continue
            free = [slot for slot in self.slots if slot.job is None]
            if not free:
                return
            self._waiting.popleft()
            holders = self.slots + self.parked if self.decoder.shares_cells else free  # on KV streams: its own
            reuse = {slot.seq: self._reusable(slot, job) for slot in holders}
            slot = max(free, key=lambda s: (reuse[s.seq], -s.seq))
            source = max(holders, key=lambda s: (reuse[s.seq], s is slot, -s.seq))
            self._start(slot, job, source, reuse[source.seq])

    def _reusable(self, slot: _Slot, job: Job) -> int:
        """How many of the job's prompt tokens the slot's cells already hold under the job's prompt setting
        (at least one prompt token is always decoded again, for its logits)."""
        record = slot.record if slot.job is None else _computed_under(slot.job)
        shared = common_prefix(slot.cached, job.tokens)
        return min(shared, record.reusable(job.setting.for_prompt(), len(slot.cached)), len(job.tokens) - 1)

    def _start(self, slot: _Slot, job: Job, source: _Slot, reuse: int) -> None:
        """Run the job in `slot`, its first `reuse` positions taken from the cells `source` holds (the slot's
        own, or on a unified cache another slot's: a cell then belongs to both sequences)."""
        seed = job.sampling.seed if job.sampling.seed is not None else self._seeds.randint(0, 2**32 - 1)
        try:  # before the cells change: a refused job leaves the slot as it was
            slot.chain = job.sampling.chain(self.llm, seed)
        except InputError as error:
            job.events.put(Failed(str(error)))
            return
        self._clock += 1
        source.used = self._clock
        if source is not slot or reuse < slot.record.split:
            self._park(slot, keep=source)
        if source is slot:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, reuse, -1)
        else:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
            llama_cpp.llama_memory_seq_cp(self._memory, source.seq, slot.seq, 0, reuse)
        slot.job, slot.cached = job, list(job.tokens[:reuse])
        slot.pending, slot.position = list(job.tokens[reuse:]), reuse
        slot.generated, slot.reused, slot.emitted, slot.row = [], reuse, 0, None

    def _park(self, slot: _Slot, keep: _Slot) -> None:
        """Keep the prompt cells of a slot that is about to drop them on a parked id (the least recently used
        other than `keep`, the cells a request is about to take), unless another holder has them already or the
        cache has no room."""
        prompt, length = slot.record.prompt, min(slot.record.split, len(slot.cached))
        if not self.parked or prompt is None or length < 2:
            return
        tokens = slot.cached[:length]
        for holder in self.slots + self.parked:
            if holder is not slot and holder.job is None and holder.record.prompt == prompt and \
                    common_prefix(holder.cached[:holder.record.split], tokens) == length:
                return
        candidates = [park for park in self.parked if park is not keep]
        if not candidates:
            return
        park = min(candidates, key=lambda p: p.used)
        self._unpark(park)
        if not self._make_room(length, keep):
            return
        llama_cpp.llama_memory_seq_cp(self._memory, slot.seq, park.seq, 0, length)
        self._clock += 1
        park.cached, park.record, park.used = tokens, KvRecord(prompt, length), self._clock

    def _unpark(self, park: _Slot) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, park.seq, -1, -1)
        park.cached, park.record = [], KvRecord()

    def _make_room(self, cells: int, keep: _Slot | None = None) -> bool:
        """Drop parked prompts (but `keep`), least recently used first, until `cells` more fit the cache
        (counting every holder's cells as its own, which over-counts shared ones); whether they fit."""
        def held() -> int:
            return sum(len(s.cached) + len(s.pending) for s in self.slots) + sum(len(p.cached) for p in self.parked)

        while held() + cells > self.decoder.n_ctx:
            occupied = [park for park in self.parked if park.cached and park is not keep]
            if not occupied:
                return False
            self._unpark(min(occupied, key=lambda p: p.used))
        return True

    def _step(self) -> None:
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled.is_set():
                self._release(slot)
        generating = [slot for slot in self.slots if slot.job is not None and not slot.pending]
        room, chunks = self.decoder.n_batch - len(generating), {}
        for slot in self.slots:  # one token for every generating sequence, then prompts as far as there is room
            if slot.job is not None and slot.pending and room > 0:
                chunks[slot.seq] = slot.pending[:room]
                room -= len(chunks[slot.seq])
        # Rows in slot order: llama.cpp splits a batch over KV streams by runs of consecutive sequence ids.
        entries: list[tuple[int, int, list[int], bool, SteeringSetting]] = []
        for slot in self.slots:
            slot.row = None
            if slot in generating:
                slot.row = len(entries)
                entries.append((slot.generated[-1], slot.position, [slot.seq], True, slot.job.setting))
            elif slot.seq in chunks:
                chunk = chunks[slot.seq]
                slot.pending = slot.pending[len(chunk):]
                prompt = slot.job.setting.for_prompt()
                for offset, token in enumerate(chunk):
                    last = not slot.pending and offset == len(chunk) - 1
                    entries.append((token, slot.position + offset, [slot.seq], last, prompt))
                if not slot.pending:
                    slot.row = len(entries) - 1
        if not entries:
            return
        self._make_room(len(entries))
        self.decoder.decode(entries)
        self.steps += 1
        for slot in self.slots:
            if slot.job is None:
                continue
            decoded = [entry[0] for entry in entries if entry[2][0] == slot.seq]
            slot.cached += decoded
            slot.position += len(decoded)
            if slot.row is not None:
                self._sample(slot)

    def _sample(self, slot: _Slot) -> None:
        job = slot.job
        self._edit_logits(slot)
        token = int(llama_cpp.llama_sampler_sample(slot.chain, self.llm.ctx, slot.row))
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            return self._finish(slot, "stop", self._text(slot))
        slot.generated.append(token)
        text = self._text(slot)
        for stop in job.stop:
            at = text.find(stop)
            if at >= 0:
                return self._finish(slot, "stop", text[:at])
        if len(slot.generated) >= job.max_tokens or slot.position >= self.cells_per_sequence:
            return self._finish(slot, "length", text)
        if job.streamed:
            self._emit(slot, text, hold=_held_back(text, job.stop))

    def _edit_logits(self, slot: _Slot) -> None:
        """The logit bias, and no end of generation before `min_tokens`, written into the row's logits (what
        llama-cpp-python's logits processors do before its sampler chain)."""
        sampling = slot.job.sampling
        banned = self._eog_tokens() if len(slot.generated) < sampling.min_tokens else ()
        if not sampling.logit_bias and not banned:
            return
        logits = llama_cpp.llama_get_logits_ith(self.llm.ctx, slot.row)
        row = np.ctypeslib.as_array(logits, shape=(self.decoder.n_vocab,))
        for token, bias in sampling.logit_bias:
            row[token] += bias
        for token in banned:
            row[token] = -np.inf

    def _eog_tokens(self) -> list[int]:
        if not hasattr(self, "_eog"):
            vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
            self._eog = [t for t in range(self.decoder.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        return self._eog

    def _text(self, slot: _Slot) -> str:
        """The completion so far, without a trailing incomplete UTF-8 character."""
        data = self.llm.detokenize(slot.generated, prev_tokens=slot.job.tokens)
        for cut in range(min(4, len(data)) + 1):
            try:
                return data[: len(data) - cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
        return data.decode("utf-8", errors="replace")

    def _emit(self, slot: _Slot, text: str, hold: int) -> None:
        ready = len(text) - hold
        if ready > slot.emitted:
            slot.job.events.put(Text(text[slot.emitted:ready]))
            slot.emitted = ready

    def _finish(self, slot: _Slot, reason: str, text: str) -> None:
        job = slot.job
        if job.streamed:
            self._emit(slot, text, hold=0)
        job.events.put(Done(reason, len(job.tokens), tuple(slot.generated), slot.reused, text))
        self._release(slot)

    def _release(self, slot: _Slot, keep_cells: bool = True) -> None:
        """Free the slot; its cells stay for a later prompt that starts the same way (unless they are suspect)."""
        if slot.chain is not None:
            llama_cpp.llama_sampler_free(slot.chain)
        if slot.job is not None and keep_cells:
            slot.record = _computed_under(slot.job)
        elif slot.job is not None:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
            slot.cached, slot.record = [], KvRecord()
        slot.job, slot.chain, slot.pending, slot.row = None, None, [], None


def _computed_under(job: Job) -> KvRecord:
    """Which settings a job's cells are computed under: its prompt setting, then (generated) its setting."""
    return KvRecord(job.setting.for_prompt(), len(job.tokens), job.setting)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could be the start of a stop string (kept back while streaming)."""
    hold = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:length]):
                hold = max(hold, length)
                break
    return hold


def logit_bias_of(bias: dict[int, float]) -> tuple[tuple[int, float], ...]:
    return tuple(sorted((int(token), float(value)) for token, value in bias.items()))

