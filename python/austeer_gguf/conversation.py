"""How a conversation is written for a model: through its own chat template, or as `User: ...\nAssistant:`
lines for a model without one (a base model). The one owner of chat rendering: contrastive pairs, the
evaluation's prompts and the server's length check all render turns here, ready for the assistant's reply."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

from .errors import InputError

ROLES = ("system", "user", "assistant")
FALLBACK_TURN = {"system": "{content}\n", "user": "User: {content}\n", "assistant": "Assistant: {content}\n"}
FALLBACK_STOP = "\nUser:"  # where a model without a template starts writing the user's next turn

Turns = Sequence[tuple[str, str]]  # (role, content)


def has_template(llm: Any) -> bool:
    return bool(llm.metadata.get("tokenizer.chat_template"))


def renderer(llm: Any, *, require_template: bool = False) -> Callable[[Turns], str]:
    """Renders (role, content) turns for `llm` (a llama_cpp.Llama), ready for the assistant's reply. Made once
    per model: compiling a template costs milliseconds, which a server would otherwise pay per request."""
    if not has_template(llm) and require_template:
        raise InputError("this model has no chat template (tokenizer.chat_template); localize without --chat")
    if llm not in _renderers:
        _renderers[llm] = _make_renderer(llm)
    return _renderers[llm]


_renderers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _make_renderer(llm: Any) -> Callable[[Turns], str]:
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        def plain(turns: Turns) -> str:
            return "".join(FALLBACK_TURN[role].format(content=content) for role, content in turns) + "Assistant:"

        return plain
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() != -1 else ""
    eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() != -1 else ""
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
    # The tokenizer adds BOS itself where the model asks for it: then the template's own BOS text goes. Where it
    # does not (SmolLM2, whose BOS is <|im_start|>), the text stays as the template wrote it.
    adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model)))

    def format_turns(turns: Turns) -> str:
        return formatter(messages=[{"role": role, "content": content} for role, content in turns]).prompt

    def render(turns: Turns) -> str:
        try:
            text = format_turns(turns)
        except ValueError:  # the template's raise_exception, e.g. "System role not supported"
            if not any(role == "system" for role, _ in turns):
                raise
            text = format_turns(fold_system(turns))
        return text[len(bos):] if adds_bos and bos and text.startswith(bos) else text

    return render


def fold_system(turns: Turns) -> list[tuple[str, str]]:
    """The turns for a template without a system role: the system text opens the first user turn (as Gemma's
    own template does)."""
    system = "\n\n".join(content for role, content in turns if role == "system")
    rest = [(role, content) for role, content in turns if role != "system"]
    first_user = next((i for i, (role, _) in enumerate(rest) if role == "user"), None)
    if first_user is None:
        return [("user", system), *rest]
    rest[first_user] = ("user", f"{system}\n\n{rest[first_user][1]}")
    return rest


def chat_stops(llm: Any) -> tuple[str, ...]:
    """Where a reply ends besides the model's end-of-turn token: for a model without a template, where it starts
    writing the user's next turn."""
    return () if has_template(llm) else (FALLBACK_STOP,)


def chat_handler(llm: Any) -> Callable[..., Any]:
    """A chat handler for llama-cpp-python's `create_chat_completion` that writes the conversation as `renderer`
    does and stops as `chat_stops` says (without it, llama-cpp-python guesses a format for a model without a
    template, and a base model answers that with an empty reply)."""
    from llama_cpp.llama_chat_format import ChatFormatterResponse, chat_formatter_to_chat_completion_handler

    render, stops = renderer(llm), list(chat_stops(llm))

    def format_chat(*, messages: list[dict[str, Any]], **_: Any) -> ChatFormatterResponse:
        return ChatFormatterResponse(prompt=render([(m["role"], m["content"]) for m in messages]), stop=stops or None)

    return chat_formatter_to_chat_completion_handler(format_chat)


def user_turn_renderer(llm: Any) -> Callable[[str], str]:
    """Renders a prompt as one user turn through the model's own chat template, ready for the answer."""
    render = renderer(llm, require_template=True)
    return lambda prompt: render([("user", prompt)])
