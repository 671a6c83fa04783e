"""An interactive chat with a steering toggle: the detox switch of a desktop assistant.

Commands: /steer on, /steer off, /strength S, /profile NAME|FILE (several: A+B, weighted: A:0.5+B),
/apply all|generation (steer every position, or generated tokens only), /status, /reset, /quit.
A command takes effect at the next reply; the conversation so far is recomputed under the new setting.
"""

from __future__ import annotations

import sys
from typing import TextIO

from ..errors import InputError
from ..profile import parse_mix
from ..runtime.steered_llama import context_overflow

HELP = ("commands: /steer on|off, /strength S, /profile NAME|FILE (or A+B, A:0.5+B), /apply all|generation, "
        "/status, /reset, /quit")


def run_chat(llm, *, max_tokens: int, temperature: float, seed: int, force: bool = False,
             source: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    history: list[dict[str, str]] = []
    print(HELP, file=out)
    print(_status(llm), file=out)
    while True:
        print("> ", end="", file=out, flush=True)
        line = source.readline()
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if text in ("/quit", "/exit"):
                return 0
            if text == "/reset":
                history.clear()
                print("(conversation cleared)", file=out)
                continue
            try:
                print(_command(llm, text, force), file=out)
            except (InputError, OSError) as error:
                print(f"error: {error}", file=out)
            continue
        history.append({"role": "user", "content": text})
        try:
            reply = llm.create_chat_completion(history, max_tokens=max_tokens, temperature=temperature, seed=seed)
        except ValueError as error:
            if context_overflow(error) is None:
                raise
            history.pop()
            print(f"error: {context_overflow(error)} (/reset clears the conversation)", file=out)
            continue
        answer = (reply["choices"][0]["message"]["content"] or "").strip()
        history.append({"role": "assistant", "content": answer})
        print(answer, file=out, flush=True)


def _command(llm, text: str, force: bool = False) -> str:
    name, _, argument = text.partition(" ")
    argument = argument.strip()
    if name == "/steer" and argument in ("on", "off"):
        llm.steering.enabled = argument == "on"
    elif name == "/strength":
        try:
            value = float(argument)
        except ValueError:
            raise InputError(f"/strength takes a number, got {argument!r}") from None
        llm.steering.strength = value
    elif name == "/profile" and argument:
        llm.steering.set_profiles([(llm.resolve_profile(spec), weight) for spec, weight in parse_mix(argument)],
                                  allow_model_mismatch=force)
    elif name == "/apply" and argument in ("all", "generation"):
        llm.steering.scope = argument
    elif name == "/status":
        pass
    else:
        return f"unknown command {text!r}; {HELP}"
    return _status(llm)


def _status(llm) -> str:
    steering = llm.steering
    profiles = "+".join(p.name if w == 1.0 else f"{p.name}:{w:g}" for p, w in steering.profiles) or "none"
    scope = "" if steering.scope == "all" else ", generated tokens only"
    return (f"(steering {'on' if steering.enabled else 'off'}, profile {profiles}, strength {steering.strength:g}"
            f"{scope})")
