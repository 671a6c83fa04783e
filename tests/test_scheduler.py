"""Continuous batching (engine/scheduler.py): requests with their own settings and sampling join a running batch,
stream, stop, leave, and reuse the cells of a slot only where they were computed under the same setting."""

from __future__ import annotations

import time

import pytest

from austeer_gguf import OFF, SteeredLlama
from austeer_gguf.engine.decoder import common_prefix, generate_tokens
from austeer_gguf.engine.scheduler import Done, Job, Sampling, Scheduler, Text

from conftest import THREADS, profile_on

GREEDY = Sampling(temperature=0.0)
TEXTS = ["the cat is", "a dog was very", "I like this day", "hello world", "you hate the", "it was a good"]


@pytest.fixture(params=[True, False], ids=["unified-cache", "stream-per-slot"])
def scheduled(tiny_f32, request):
    llm = SteeredLlama(tiny_f32, n_ctx=4 * 256, n_batch=128, sequences=4, kv_unified=request.param, verbose=False,
                       n_threads=THREADS, n_threads_batch=THREADS)
    scheduler = Scheduler(llm, seed=0).start()
    yield llm, scheduler
    scheduler.close()


def finish(job: Job) -> tuple[str, Done]:
    text = ""
    for event in job.stream():
        if isinstance(event, Text):
            text += event.text
        else:
            assert isinstance(event, Done), event
            return text, event
    raise AssertionError("no end")


def tokens_of(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode(), add_bos=True, special=True)


def test_mixed_settings_in_one_batch_generate_what_each_generates_alone(tiny_f32, scheduled):
    llm, scheduler = scheduled
    attn = profile_on("attn", 64, 3, 1)
    settings = [OFF, llm.steering.setting([(attn, 1.0)]), llm.steering.setting([(attn, 1.0)], scope="generation"),
                llm.steering.setting([(profile_on("ffn", 64, 3, 2), 1.0)]), OFF,
                llm.steering.setting([(profile_on("layer", 64, 3, 3), 0.5)])]
    prompts = [tokens_of(llm, text) for text in TEXTS]
    jobs = [scheduler.submit(Job(p, s, GREEDY, max_tokens=8)) for p, s in zip(prompts, settings)]  # 6 jobs, 4 slots
    batched = [finish(job)[1].tokens for job in jobs]
    alone = SteeredLlama.for_evaluation(tiny_f32, n_ctx=512, n_batch=256, verbose=False, n_threads=THREADS)
    expected = [tuple(generate_tokens(alone, [p], max_tokens=8, setting=s)[0]) for p, s in zip(prompts, settings)]
    assert batched == expected
    assert len(set(batched)) > 3  # the settings steer apart
    assert llm.native_counters()["skipped_rows"] == 0


def test_a_job_alone_samples_what_llama_cpp_python_samples_with_the_same_seed(tiny_f32, scheduled):
    llm, scheduler = scheduled
    sampling = Sampling(temperature=0.9, top_k=20, top_p=0.9, min_p=0.02, repeat_penalty=1.1, seed=1234)
    prompt = tokens_of(llm, "the cat is")
    _, done = finish(scheduler.submit(Job(prompt, OFF, sampling, max_tokens=12)))
    plain = SteeredLlama(tiny_f32, n_ctx=256, verbose=False, n_threads=THREADS, n_threads_batch=THREADS)
    plain.set_seed(1234)  # as create_completion(seed=1234) does before it generates
    expected = []
    for token in plain.generate(prompt, temp=0.9, top_k=20, top_p=0.9, min_p=0.02, repeat_penalty=1.1):
        if token == plain.token_eos() or len(expected) == 12:
            break
        expected.append(token)
    assert list(done.tokens) == expected


def test_a_short_request_joins_and_ends_while_a_long_one_streams(scheduled):
    llm, scheduler = scheduled
    long = scheduler.submit(Job(tokens_of(llm, TEXTS[0]), OFF, GREEDY, max_tokens=120))
    next(long.stream())  # the long one is streaming
    steps = scheduler.steps
    short = scheduler.submit(Job(tokens_of(llm, TEXTS[1]), OFF, GREEDY, max_tokens=3))
    _, done = finish(short)
    assert done.finish_reason == "length" and done.completion_tokens == 3
    assert not any(isinstance(e, Done) for e in list(long.events.queue))  # the long one is still running
    assert scheduler.steps - steps < 10  # it joined the running batch, not the end of the queue
    _, long_done = finish(long)
    assert long_done.completion_tokens == 120


def test_a_cancelled_job_frees_its_slot_at_the_next_step(scheduled):
    llm, scheduler = scheduled
    hogs = [scheduler.submit(Job(tokens_of(llm, text), OFF, GREEDY, max_tokens=200)) for text in TEXTS[:4]]
    waiting = scheduler.submit(Job(tokens_of(llm, TEXTS[4]), OFF, GREEDY, max_tokens=2))
    time.sleep(0.2)
    assert waiting.events.empty()  # every slot is taken
    scheduler.cancel(hogs[0])
    _, done = finish(waiting)
    assert done.completion_tokens == 2
    for hog in hogs[1:]:
        scheduler.cancel(hog)


def test_a_slot_reuses_its_cells_only_under_the_same_prompt_setting(scheduled):
    llm, scheduler = scheduled
    steered = llm.steering.setting([(profile_on("attn", 64, 3, 1), 1.0)])
    generation_only = llm.steering.setting([(profile_on("attn", 64, 3, 1), 1.0)], scope="generation")
    system = tokens_of(llm, "you are a cat and the dog is very happy this day and I like it")

    def run(extra: str, setting) -> Done:
        return finish(scheduler.submit(Job(system + tokens_of(llm, extra)[1:], setting, GREEDY, max_tokens=4)))[1]

    first = run("hello", steered)
    assert first.reused == 0
    again = run("hello", steered)
    assert again.reused == len(system) + len(tokens_of(llm, "hello")) - 2 and again.tokens == first.tokens
    unsteered = run("hello", OFF)  # computed under another setting: nothing of the steered cells is reused
    assert unsteered.reused == 0
    shared = run("world", generation_only)  # its prompt is computed unsteered: the OFF cells serve it
    assert shared.reused >= len(system) - 1
    fresh = SteeredLlama.for_evaluation(scheduler.llm.model_path, n_ctx=512, n_batch=256, verbose=False,
                                        n_threads=THREADS)
    prompt = system + tokens_of(llm, "world")[1:]
    assert shared.tokens == tuple(generate_tokens(fresh, [prompt], max_tokens=4, setting=generation_only)[0])


def test_a_request_shares_the_prompt_cells_another_slot_holds_under_its_prompt_setting(tiny_f32, scheduled):
    llm, scheduler = scheduled
    steered = llm.steering.setting([(profile_on("attn", 64, 3, 1), 1.0)])
    generation_only = llm.steering.setting([(profile_on("attn", 64, 3, 1), 1.0)], scope="generation")
    system = tokens_of(llm, "you are a cat and the dog is very happy this day and I like it")
    running = scheduler.submit(Job(system + tokens_of(llm, "hello")[1:], steered, GREEDY, max_tokens=200))
    next(running.stream())  # its prompt is in its slot's cells, and it keeps generating

    def run(extra: str, setting) -> Done:
        return finish(scheduler.submit(Job(system + tokens_of(llm, extra)[1:], setting, GREEDY, max_tokens=4)))[1]

    cases = [("world", steered), ("world", OFF), ("sea", generation_only), ("sky", OFF)]
    done = [run(extra, setting) for extra, setting in cases]
    scheduler.cancel(running)
    prompt = {extra: system + tokens_of(llm, extra)[1:] for extra in ("hello", "world", "sea", "sky")}
    if scheduler.decoder.shares_cells:
        # steered: from the running slot; OFF: nothing (every cell held is steered); the generation-scoped prompt
        # is computed unsteered: from the OFF request's slot; OFF again: from either of the last two
        expected = [common_prefix(prompt["hello"], prompt["world"]), 0, common_prefix(prompt["world"], prompt["sea"]),
                    max(common_prefix(prompt[other], prompt["sky"]) for other in ("world", "sea"))]
        assert [d.reused for d in done] == expected and min(expected[2:]) >= len(system) - 1
    else:  # on KV streams a slot serves only its own later requests: each unsteered prompt follows the last one
        expected = [0, 0, common_prefix(prompt["world"], prompt["sea"]), common_prefix(prompt["sea"], prompt["sky"])]
        assert [d.reused for d in done] == expected
    alone = SteeredLlama.for_evaluation(tiny_f32, n_ctx=512, n_batch=256, verbose=False, n_threads=THREADS)
    for (extra, setting), result in zip(cases, done):
        assert result.tokens == tuple(generate_tokens(alone, [prompt[extra]], max_tokens=4, setting=setting)[0])


def test_stop_strings_end_a_job_and_are_not_streamed(scheduled):
    llm, scheduler = scheduled
    prompt = tokens_of(llm, TEXTS[2])
    text, done = finish(scheduler.submit(Job(prompt, OFF, GREEDY, max_tokens=12)))
    assert done.finish_reason == "length" and len(text) > 4
    stop = text[2:4]
    cut, stopped = finish(scheduler.submit(Job(prompt, OFF, GREEDY, max_tokens=12, stop=(stop,))))
    assert stopped.finish_reason == "stop" and cut == text[: text.index(stop)]


def test_jobs_that_do_not_fit_are_refused(scheduled):
    llm, scheduler = scheduled
    with pytest.raises(ValueError, match="exceed context window of 256"):
        scheduler.submit(Job(list(range(3, 300)), OFF, GREEDY))
    with pytest.raises(ValueError, match="empty"):
        scheduler.submit(Job([], OFF, GREEDY))


def two_slots_two_parked(tiny_f32, n_ctx: int) -> Scheduler:
    llm = SteeredLlama(tiny_f32, n_ctx=n_ctx, n_batch=128, sequences=4, verbose=False, n_threads=THREADS,
                       n_threads_batch=THREADS)
    return Scheduler(llm, seed=0, slots=2).start()


def test_a_prompt_whose_slot_is_taken_is_parked_and_serves_a_later_request(tiny_f32):
    scheduler = two_slots_two_parked(tiny_f32, n_ctx=2 * 256)
    llm = scheduler.llm
    steered = llm.steering.setting([(profile_on("attn", 64, 3, 1), 1.0)])
    a, b = tokens_of(llm, "you are a cat and the dog is very happy"), tokens_of(llm, "hello world I like this day")

    def run(prompt, setting) -> Done:
        return finish(scheduler.submit(Job(prompt, setting, GREEDY, max_tokens=4)))[1]

    try:
        first_a, first_b = run(a, steered), run(b, OFF)  # b takes a's slot: a's prompt cells go to a parked id
        again_a, again_b = run(a, steered), run(b, OFF)  # each from its parked cells
        assert [d.reused for d in (first_a, first_b, again_a, again_b)] == [0, 0, len(a) - 1, len(b) - 1]
        assert (again_a.tokens, again_b.tokens) == (first_a.tokens, first_b.tokens)
        assert len(scheduler.slots) == 2 and [len(park.cached) for park in scheduler.parked] == [len(a), len(b)]
    finally:
        scheduler.close()
    alone = SteeredLlama.for_evaluation(tiny_f32, n_ctx=512, n_batch=256, verbose=False, n_threads=THREADS)
    assert first_a.tokens == tuple(generate_tokens(alone, [a], max_tokens=4, setting=steered)[0])


def test_parked_prompts_give_way_when_the_running_requests_need_the_cells(tiny_f32):
    scheduler = two_slots_two_parked(tiny_f32, n_ctx=2 * 64)  # each slot's share: 64 cells, parked ones on top
    llm = scheduler.llm
    short = tokens_of(llm, "you are a cat and the dog is very happy")
    try:
        finish(scheduler.submit(Job(short, OFF, GREEDY, max_tokens=2)))
        longer = [scheduler.submit(Job(tokens_of(llm, text), OFF, GREEDY, max_tokens=100)) for text in TEXTS[:2]]
        next(longer[0].stream())
        assert [park.cached for park in scheduler.parked if park.cached] == [short]  # the first took short's slot
        done = [finish(job)[1] for job in longer]
        assert [d.finish_reason for d in done] == ["length", "length"]
        assert all(d.prompt_tokens + d.completion_tokens >= 63 for d in done)  # each filled its share
        assert not any(park.cached for park in scheduler.parked)  # the parked prompt made room
        again = finish(scheduler.submit(Job(short, OFF, GREEDY, max_tokens=2)))[1]
        assert again.reused == max(common_prefix(short, tokens_of(llm, text)) for text in TEXTS[:2])  # the BOS
    finally:
        scheduler.close()
