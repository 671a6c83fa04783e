"""The OpenAI-compatible server (`python -m austeer_gguf serve`) driven by the official `openai` client and
raw HTTP: per-request steering, isolation under concurrent and streaming requests, the steering endpoints,
bad requests answered 4xx while the server keeps serving, and a client that disconnects mid-stream."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time

import httpx
import llama_cpp
import openai
import pytest

from austeer_gguf import Profile, Unit
from austeer_gguf.engine.rpc import free_port
from austeer_gguf.formats.embedded import embed_profiles
from austeer_gguf.formats.profiles import profile_to_dict, write_profile

from server_fixture import running_server

MOOD = Profile("mood", 4.0, [Unit(layer, "attn", dim, 0.8) for layer in range(3) for dim in (1, 5, 9, 13)])
CALM = Profile("calm", 3.0, [Unit(layer, "ffn", dim, -0.7) for layer in range(3) for dim in (2, 6, 10)])
MESSAGES = [{"role": "user", "content": "the cat is"}]
SETTINGS = [None, {"enabled": False}, {"profiles": {"calm": 1.0}}, {"profiles": {"mood": 0.5, "calm": 1.0}},
            {"apply": "generation"}, {"strength": 2.0}]


@pytest.fixture(scope="module", params=[["--parallel", "4"], ["--parallel", "4", "--kv-streams"], ["--parallel", "1"]],
                ids=["batched", "batched-kv-streams", "one-at-a-time"])
def server(tiny_f32, tmp_path_factory, request):
    """The server decoding 4 requests together (continuous batching) on one KV cache and on a KV stream per
    request, and one at a time (--parallel 1)."""
    model = embed_profiles(tiny_f32, [MOOD], tmp_path_factory.mktemp("served") / "tiny.gguf")
    calm = tmp_path_factory.mktemp("profiles") / "calm.json"
    write_profile(CALM, calm)
    with running_server(model, "--profile", str(calm), "--default", "mood", "--n-ctx", "512",
                        *request.param) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client, steering, *, stream=False, max_tokens=8):
    extra = {} if steering is None else {"steering": steering}
    if not stream:
        reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=max_tokens, temperature=0,
                                               extra_body=extra)
        return reply.choices[0].message.content, reply.model_extra["steering"]
    text, settings = "", []
    for chunk in client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=max_tokens,
                                                temperature=0, stream=True, extra_body=extra):
        settings.append(chunk.model_extra["steering"])
        text += chunk.choices[0].delta.content or ""
    assert all(setting == settings[0] for setting in settings)
    return text, settings[0]


def test_each_request_runs_under_its_own_setting_and_says_which(client):
    replies = {}
    for steering in SETTINGS:
        text, ran_under = chat(client, steering)
        assert (text, ran_under) == chat(client, steering, stream=True)
        replies[json.dumps(steering)] = text
        expected = {"enabled": True, "profiles": {"mood": 1.0}, "strength": 1.0, "apply": "all"}
        if steering and "profiles" in steering:
            expected["profiles"] = steering["profiles"]
        expected.update({k: v for k, v in (steering or {}).items() if k != "profiles"})
        if not expected["enabled"]:  # what it ran under: nothing steered
            expected = {"enabled": False, "profiles": {}, "strength": 0.0, "apply": "all"}
        assert ran_under == expected
    assert len(set(replies.values())) == len(SETTINGS), "every setting must give its own reply here"
    completion = client.completions.create(model="tiny", prompt="the cat is", max_tokens=4, temperature=0,
                                           extra_body={"steering": {"enabled": False}})
    assert completion.model_extra["steering"]["enabled"] is False


def test_a_batched_server_says_how_many_prompt_tokens_came_from_a_slots_cache(client, request):
    def usage():
        return client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, temperature=0,
                                              extra_body={"steering": {"profiles": {"calm": 1.0}}}).usage

    first, again = usage(), usage()
    if "1" in request.node.callspec.params["server"]:  # llama-cpp-python's own usage: no details
        assert first.prompt_tokens_details is None and again.prompt_tokens == first.prompt_tokens
        return
    assert again.prompt_tokens_details.cached_tokens == again.prompt_tokens - 1  # all but the token it decodes


def test_both_servers_write_a_chat_as_the_package_does_and_stop_at_the_next_user_turn(client):
    """The tiny model has no chat template: a chat is `User:`/`Assistant:` lines (conversation.py) in the
    batched server and in the one-at-a-time one (llama-cpp-python would guess another format there), and the
    reply ends where the model starts writing the user's next turn."""
    text, _ = chat(client, {"enabled": False}, max_tokens=24)
    completion = client.completions.create(model="tiny", prompt="User: the cat is\nAssistant:", max_tokens=24,
                                           temperature=0, extra_body={"steering": {"enabled": False}})
    assert text.strip() == completion.choices[0].text.split("\nUser:")[0].strip()
    assert "\nUser:" not in text


def test_concurrent_mixed_requests_never_leak_settings(client):
    alone = {json.dumps(s): chat(client, s)[0] for s in SETTINGS}
    jobs = [(SETTINGS[i % len(SETTINGS)], i % 3 == 0) for i in range(36)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: (job[0], chat(client, job[0], stream=job[1])), jobs))
    for steering, (text, _) in results:
        assert text == alone[json.dumps(steering)], f"{steering}: a concurrent request changed this reply"


def test_the_steering_endpoints(server, client):
    listing = httpx.get(f"{server}/v1/steering").json()
    assert {(p["name"], p["source"]) for p in listing["data"]} == {("mood", "embedded"), ("calm", "loaded")}
    assert listing["default"] == {"enabled": True, "profiles": {"mood": 1.0}, "strength": 1.0, "apply": "all"}
    added = Profile("brisk", 2.0, [Unit(1, "layer", 7, 0.6)])
    response = httpx.post(f"{server}/v1/steering/profiles", json=profile_to_dict(added))
    assert response.status_code == 201 and response.json()["name"] == "brisk"
    assert chat(client, {"profiles": {"brisk": 1.0}})[1]["profiles"] == {"brisk": 1.0}
    try:
        assert httpx.put(f"{server}/v1/steering", json={"profiles": {"calm": 1.0}}).status_code == 200
        assert chat(client, None)[1]["profiles"] == {"calm": 1.0}
    finally:
        httpx.put(f"{server}/v1/steering", json={"profiles": {"mood": 1.0}})
    assert httpx.get(f"{server}/v1/models").json()["data"][0]["id"] == "tiny.gguf"
    inline = {"profile": profile_to_dict(Profile("inline", 3.0, [Unit(0, "ffn", 3, 0.9)])), "profiles": {}}
    assert chat(client, inline)[1]["profiles"] == {"inline": 1.0}


HI = b'"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize("body, status, message", [
    (b'{"messages": [', 400, "not valid JSON"),
    (b'{' + HI + b', "steering": {"profiles": {"nope": 1}}}', 400, "no profile named 'nope'"),
    (b'{' + HI + b', "steering": {"strength": NaN}}', 400, "strength must be a finite number"),
    (b'{' + HI + b', "steering": {"strength": Infinity}}', 400, "strength must be a finite number"),
    (b'{' + HI + b', "steering": {"profiles": {"mood": 1e308}}}', 400, "weight of profile 'mood'"),
    (b'{' + HI + b', "steering": {"colour": "red"}}', 400, "steering.colour: Extra inputs are not permitted"),
    (b'{' + HI + b', "steering": {"apply": "sometimes"}}', 400, "steering.apply"),
    (b'{' + HI + b', "max_tokens": 100000000}', 400, "max_tokens = 100000000 is outside 1..512"),
    (b'{' + HI + b', "temperature": -3}', 400, "temperature must be a finite number in 0..100"),
    (b'{"messages": [{"role": "user", "content": "' + b"the cat is " * 400 + b'"}], "max_tokens": 4}', 400,
     "maximum context length is 512 tokens"),
    (b'{"messages": [{"role": "user", "content": "' + b"a" * (2 << 20) + b'"}]}', 413, "over 1048576 bytes"),
    (b'{"messages": [{"role": "user", "content": "' + b"the cat is " * 400 + b'"}], "stream": true}', 400,
     "exceed context window of 512"),
    (b'{' + HI + b', "steering": {"profiles": {"mood": 1}, "profile": {"name": "mood", "alpha": 1, '
     b'"units": []}}}', 400, "profile 'mood' is named twice"),
    (b'{' + HI + b', "logprobs": true}', 400, "does not return log-probabilities"),
    (b'{' + HI + b', "grammar": "root ::= ("}', 400, "does not parse as GBNF"),
    (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "not UTF-8"),
    (b'[' * 100_000 + b']' * 100_000, 400, "nests too deeply"),
    (b'{' + HI + b', "max_tokens": ' + b'9' * 5000 + b'}', 400,
     "an integer of thousands of digits"),
    (b'{"messages": []}', 400, "messages is empty"),
    (b'{' + HI + b', "n": 2}', 400, "one choice per request"),
    (b'{' + HI + b', "max_token": 4}', 400,
     "unknown field 'max_token' (did you mean 'max_tokens'?)"),
    (b'{' + HI + b', "logit_bias": {"5": NaN}}', 400, "must be a number in -100..100"),
    (b'{' + HI + b', "logit_bias": {"5": 1e308}}', 400,
     "must be a number in -100..100"),
    (b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}', 400,
     "reads text only"),
    (b'{' + HI + b', "steering": {"profile": {"name": "../x\\ny", "alpha": 1, '
     b'"units": []}}}', 400, "cannot be embedded"),
    (b'{' + HI + b', "steering": {"profile": {"name": "mood", "alpha": -8, '
     b'"units": [{"layer": 0, "site": "ffn", "dim": 1, "score": 0.5}]}, "profiles": {}}}', 400,
     "differs from the server's profile of that name"),
])
def test_bad_requests_get_a_4xx_that_says_what_to_do_and_the_server_keeps_serving(server, client, body, status,
                                                                                  message):
    response = httpx.post(f"{server}/v1/chat/completions", content=body, headers={"content-type": "application/json"},
                          timeout=60)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert chat(client, None)[0]  # still serving


def test_a_chunked_body_over_the_limit_is_refused(server, client):
    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"a" * (64 << 10)
        yield b'"}]}'

    response = httpx.post(f"{server}/v1/chat/completions", content=chunks(), timeout=60,
                          headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over 1048576 bytes" in response.json()["error"]["message"]
    assert chat(client, None)[0]


def test_a_client_that_disconnects_mid_stream_frees_the_model(server, client):
    expected = chat(client, {"enabled": False})[0]
    body = {"messages": MESSAGES, "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
    assert chat(client, {"enabled": False})[0] == expected  # would time out (120 s) if the model stayed held


def test_text_parts_are_joined_as_openai_clients_send_them(client):
    plain = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "the cat is\nhappy"}],
                                           max_tokens=6, temperature=0)
    parts = client.chat.completions.create(model="tiny", max_tokens=6, temperature=0, messages=[
        {"role": "user", "content": [{"type": "text", "text": "the cat is"}, {"type": "text", "text": "happy"}]}])
    assert parts.choices[0].message.content == plain.choices[0].message.content


def test_odd_static_names_are_not_found(server):
    for name in ("a%00.js", "a" * 3000 + ".js", "..%2Fapp.js", "app.js%00"):
        assert httpx.get(f"{server}/static/{name}").status_code == 404
    assert httpx.get(f"{server}/static/app.js").status_code == 200


def test_a_loaded_profile_is_replaced_only_when_asked_and_the_default_runs_the_new_one(server, client):
    first = Profile("swap", 2.0, [Unit(1, "layer", 7, 0.6)])
    second = Profile("swap", -6.0, [Unit(0, "attn", 3, 0.9), Unit(2, "ffn", 4, -0.8)])
    assert httpx.post(f"{server}/v1/steering/profiles", json=profile_to_dict(first)).status_code == 201
    clash = httpx.post(f"{server}/v1/steering/profiles", json=profile_to_dict(second))
    assert clash.status_code == 409 and "replace=true" in clash.json()["error"]["message"]
    embedded = httpx.post(f"{server}/v1/steering/profiles", json=profile_to_dict(Profile("mood", 1.0, [])),
                          params={"replace": "true"})
    assert embedded.status_code == 409 and "embedded" in embedded.json()["error"]["message"]
    try:
        assert httpx.put(f"{server}/v1/steering", json={"profiles": {"swap": 1.0}}).status_code == 200
        old_reply = chat(client, None)[0]
        replaced = httpx.post(f"{server}/v1/steering/profiles", json=profile_to_dict(second),
                              params={"replace": "true"})
        assert replaced.status_code == 201
        listed = next(p for p in httpx.get(f"{server}/v1/steering").json()["data"] if p["name"] == "swap")
        assert listed["k"] == 2 and listed["alpha"] == -6.0
        new_reply = chat(client, None)[0]
        assert new_reply == chat(client, {"profiles": {"swap": 1.0}})[0] != old_reply
    finally:
        httpx.put(f"{server}/v1/steering", json={"profiles": {"mood": 1.0}})


def test_an_api_key_guards_what_completes_or_changes_state(tiny_f32, tmp_path):
    model = embed_profiles(tiny_f32, [MOOD], tmp_path / "tiny.gguf")
    with running_server(model, "--n-ctx", "256", "--api-key", "sesame") as url:
        body = {"messages": MESSAGES, "max_tokens": 2}
        for method, path, data in (("POST", "/v1/chat/completions", body), ("POST", "/v1/completions",
                                   {"prompt": "hi", "max_tokens": 2}), ("PUT", "/v1/steering", {"strength": 1.0}),
                                   ("POST", "/v1/steering/profiles", profile_to_dict(CALM))):
            refused = httpx.request(method, url + path, json=data, timeout=60)
            assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
            wrong = httpx.request(method, url + path, json=data, headers={"Authorization": "Bearer nope"}, timeout=60)
            assert wrong.status_code == 401
        keyed = openai.OpenAI(base_url=f"{url}/v1", api_key="sesame", max_retries=0, timeout=60)
        assert keyed.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2).choices[0].message
        assert httpx.get(f"{url}/v1/steering").status_code == 200 and httpx.get(f"{url}/v1/models").status_code == 200
        keyed_put = httpx.put(f"{url}/v1/steering", json={"strength": 1.0}, headers={"X-Api-Key": "sesame"})
        assert keyed_put.status_code == 200


def test_serve_refuses_what_it_cannot_do_safely_before_loading_anything(tiny_f32, tmp_path):
    def serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "austeer_gguf", "serve", str(tiny_f32), *args],
                              capture_output=True, text=True, timeout=120, env=env)

    exposed = serve("--host", "0.0.0.0", "--port", "8977")
    assert exposed.returncode == 2 and "without an API key" in exposed.stderr and "--insecure" in exposed.stderr
    port = serve("--port", "99999")
    assert port.returncode == 2 and "1..65535" in port.stderr and "Traceback" not in port.stderr
    twin = tmp_path / "twin.json"
    write_profile(Profile("calm", 1.0, [Unit(0, "ffn", 1, 0.5)]), twin)
    calm = tmp_path / "calm.json"
    write_profile(CALM, calm)
    clash = serve("--profile", str(calm), "--profile", str(twin), "--port", "8978")
    assert clash.returncode == 2 and "'calm' is loaded already" in clash.stderr
    for parallel in ("1", "4"):  # a request's context, whatever else the server holds
        wide = serve("--n-ctx", "4097", "--parallel", parallel, "--port", "8979")
        assert wide.returncode == 2 and "context length is 4096" in wide.stderr, wide.stderr


def read_stream(url: str, body: dict, lines: list, started: threading.Event) -> None:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                lines.append(line[len("data:"):].strip())
                started.set()


def stop_while_streaming(model, args: list[str], bodies: list[dict]) -> list[list[str]]:
    """Start a server, start streams, SIGTERM it while they run; what each stream received, and the exit."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "austeer_gguf", "serve", str(model), "--port", str(port),
                                "--threads", "2", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        received = [[] for _ in bodies]
        events = [threading.Event() for _ in bodies]
        readers = [threading.Thread(target=read_stream, args=(url, body, lines, event))
                   for body, lines, event in zip(bodies, received, events)]
        for reader in readers:
            reader.start()
        for event in events:
            assert event.wait(120)
        process.send_signal(signal.SIGTERM)
        for reader in readers:
            reader.join(120)
        assert process.wait(60) in (0, 143, -signal.SIGTERM)
        return received
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_lets_short_streams_finish_and_ends_long_ones_with_an_error_event(tiny_f32):
    short = {"messages": MESSAGES, "max_tokens": 40, "temperature": 0}
    long = {"messages": MESSAGES, "max_tokens": 3500, "min_tokens": 3500, "temperature": 0}
    finished, cut = stop_while_streaming(tiny_f32, ["--n-ctx", "4096", "--drain", "1"], [short, long])
    assert finished[-1] == "[DONE]"
    assert "shutting down" in json.loads(cut[-1])["error"]["message"]


@pytest.mark.real_model
def test_sigterm_ends_a_long_stream_of_the_one_at_a_time_server_with_an_error_event(smollm2):
    long = {"messages": [{"role": "user", "content": "Tell me a very long story."}], "max_tokens": 1500,
            "min_tokens": 1500, "temperature": 0}
    (cut,) = stop_while_streaming(smollm2, ["--parallel", "1", "--drain", "1"], [long])
    assert "shutting down" in json.loads(cut[-1])["error"]["message"] and len(cut) > 2


@pytest.mark.parametrize("parallel", [1, 4])
def test_the_server_opens_its_model_with_flash_attention_and_one_kv_cache_unless_told_not_to(tiny_f32, parallel):
    from austeer_gguf.apps.server import open_server

    for flash_attn, expected in ((True, llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED),
                                 (False, llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)):
        server = open_server(tiny_f32, n_ctx=128, threads=2, parallel=parallel, flash_attn=flash_attn)
        assert server.llm.context_params.flash_attn_type == expected
        server.llm.close()
    if parallel > 1:  # one KV cache for all slots, or (--kv-streams) a stream per slot
        for kv_unified in (True, False):
            server = open_server(tiny_f32, n_ctx=128, threads=2, parallel=parallel, kv_unified=kv_unified)
            assert server.llm.context_params.kv_unified == kv_unified
            server.llm.close()
    usage = subprocess.run([sys.executable, "-m", "austeer_gguf", "serve", "--help"], capture_output=True, text=True,
                           check=True).stdout
    assert "--flash-attn {on,off}" in usage and "default on" in usage and "--kv-streams" in usage
