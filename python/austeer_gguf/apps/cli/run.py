"""Commands that run a model: generate, chat, eval, serve."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ... import models
from ...engine.limits import PARALLEL
from ...errors import InputError
from ...setting import OFF
from .common import (
    MODEL_HELP,
    STRENGTH,
    add_runtime_options,
    bounded_float,
    command,
    open_steered,
    port,
    positive_int,
)

API_KEY_VARIABLE = "AUSTEER_API_KEY"


def cmd_generate(args: argparse.Namespace) -> int:
    llm = open_steered(args)
    if args.compare:
        results = {}
        for label, on in (("unsteered", False), ("steered", True)):
            with llm.steering.using(llm.steering.requested if on else OFF):
                results[label] = _reply(llm, args.prompt, args)
        width = max(len(label) for label in results)
        for label, text in results.items():
            print(f"[{label:>{width}}] {text}")
    else:
        print(_reply(llm, args.prompt, args))
    return 0


def _reply(llm, prompt: str, args: argparse.Namespace) -> str:
    from ...runtime.steered_llama import context_overflow

    try:
        if args.raw or not llm.metadata.get("tokenizer.chat_template"):
            out = llm.create_completion(prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                        seed=args.seed)
            return out["choices"][0]["text"].strip()
        out = llm.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=args.max_tokens,
                                         temperature=args.temperature, seed=args.seed)
    except ValueError as error:
        raise context_overflow(error) or error from None
    return (out["choices"][0]["message"]["content"] or "").strip()


def cmd_chat(args: argparse.Namespace) -> int:
    from ..chat import run_chat

    return run_chat(open_steered(args), max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                    force=args.force)


def cmd_eval(args: argparse.Namespace) -> int:
    from ... import datasets
    from ...evaluation.evaluate import kl_on_neutral
    from ...evaluation.tasks import load_task
    from ...ggufio.atomic import atomic_write_text, check_output

    task = load_task(args.task)
    output = check_output(Path(args.output or f"{task.name}.eval.json"), [args.model, args.task], force=args.force)
    llm = open_steered(args, sequences=True, warn_unsteered=False)
    steered = llm.steering.requested
    results = {}
    for label, setting in (("unsteered", OFF), ("steered", steered)):
        result = task.evaluate(llm, args.split, setting=setting, limit=args.limit, max_tokens=args.max_tokens,
                               temperature=args.temperature, seed=args.seed).to_dict()
        result.pop("predictions", None)
        results[label] = result
    kl = kl_on_neutral(llm, datasets.prompts("neutral", "train")[:10], steered)
    summary = {"model": str(models.resolve(args.model)), "task": task.name, "task_kind": task.kind,
               "split": args.split, "provenance": task.provenance, "profile": args.profile, "cvec": args.cvec,
               "multiplier": args.multiplier, "strength": args.strength, "kl_on_neutral": kl, **results}
    atomic_write_text(output, json.dumps(summary, indent=1) + "\n")
    keys = [k for k, v in results["steered"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    report = [f"# eval: {task.name} ({args.split})", "", f"model `{summary['model']}`, profile `{args.profile}`, "
              f"cvec `{args.cvec}`", "", "| metric | unsteered | steered |", "|---|---|---|"]
    report += [f"| {k} | {results['unsteered'][k]:.4g} | {results['steered'][k]:.4g} |" for k in keys]
    report += ["", f"KL(steered || unsteered) on neutral text: {kl:.4f} nats"]
    atomic_write_text(output.with_suffix(".md"), "\n".join(report) + "\n")
    if not args.quiet:
        print("\n".join(report))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    if not loopback and api_key is None and not args.insecure:
        raise InputError(f"listening on {args.host} without an API key would let anyone who reaches it use the model "
                         f"and change every user's steering: pass --api-key KEY (or set {API_KEY_VARIABLE}), or "
                         "--insecure if that is what you want")
    if args.rpc and not args.worker:
        return _serve_supervised(args, api_key)
    from ..server import open_server, serve

    server = open_server(models.resolve(args.model), profiles=args.profile or [], default=args.default,
                         n_ctx=args.n_ctx, threads=args.threads, strength=args.strength, apply=args.apply,
                         parallel=args.parallel, flash_attn=args.flash_attn == "on", kv_unified=not args.kv_streams,
                         rpc_servers=args.rpc.split(",") if args.rpc else None)
    if args.drain is not None:
        server.drain_seconds = args.drain
    if not loopback and api_key is None:
        print(f"warning: listening on {args.host} with no API key: anyone who can reach it can use the model",
              file=sys.stderr)
    print(f"serving {server.alias} on http://{args.host}:{args.port}/ (OpenAI API under /v1; the assistant at /; "
          f"{server.parallel} request(s) at a time{'; API key required' if api_key else ''})", file=sys.stderr)
    serve(server, host=args.host, port=args.port, api_key=api_key)
    return 0


def _serve_supervised(args: argparse.Namespace, api_key: str | None) -> int:
    """The model in a worker process this one supervises (see apps/server/supervisor.py)."""
    from ..server.supervisor import serve_supervised

    worker = [str(models.resolve(args.model)), "--n-ctx", str(args.n_ctx), "--parallel", str(args.parallel),
              "--strength", str(args.strength), "--apply", args.apply, "--flash-attn", args.flash_attn,
              "--rpc", args.rpc] + (["--kv-streams"] if args.kv_streams else [])
    for path in args.profile or []:
        worker += ["--profile", path]
    for flag, value in (("--default", args.default), ("--threads", args.threads), ("--drain", args.drain)):
        if value is not None:
            worker += [flag, str(value)]
    env = dict(os.environ)
    if api_key is not None:  # the worker asks for the same key; it travels in its environment, not its arguments
        env[API_KEY_VARIABLE] = api_key
    print(f"serving {Path(args.model).name} on http://{args.host}:{args.port}/ with its layers on {args.rpc}; the "
          "model runs in a worker process that is restarted when a backend fails", file=sys.stderr)
    serve_supervised(worker, host=args.host, port=args.port, env=env)
    return 0


def register(commands) -> None:
    generate = command(commands, "generate", "complete one prompt, steered (and unsteered with --compare)",
                       cmd_generate)
    generate.add_argument("model", help=MODEL_HELP)
    generate.add_argument("prompt", help="the user message (or raw text with --raw)")
    generate.add_argument("--compare", action="store_true", help="print unsteered and steered side by side")
    generate.add_argument("--raw", action="store_true", help="plain completion, no chat template")
    add_runtime_options(generate, max_tokens=96, n_ctx=2048)

    chat = command(commands, "chat", "interactive chat with /steer on|off, /strength S, /profile NAME", cmd_chat)
    chat.add_argument("model", help=MODEL_HELP)
    add_runtime_options(chat, max_tokens=96, n_ctx=2048)

    evaluate = command(commands, "eval", "measure a steering setting on a task (and unsteered beside it)", cmd_eval)
    evaluate.add_argument("model", help=MODEL_HELP)
    evaluate.add_argument("--task", required=True, help="word-polarity, sentiment, detox, or a JSONL file")
    evaluate.add_argument("--split", default="test", choices=["dev", "test"], help="which split to measure")
    evaluate.add_argument("-o", "--output", help="result JSON (default: <task>.eval.json; a .md beside it)")
    evaluate.add_argument("--limit", type=positive_int, help="first N items (and N harmless prompts)")
    evaluate.add_argument("--quiet", action="store_true", help="no table on the terminal (the files are written)")
    add_runtime_options(evaluate, max_tokens=32, n_ctx=1024)

    serve_ = command(commands, "serve", "an OpenAI-compatible server with per-request steering and the assistant "
                     "page", cmd_serve)
    serve_.add_argument("model", help=MODEL_HELP)
    serve_.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback: this machine only)")
    serve_.add_argument("--port", type=port, default=8080, help="port to listen on")
    serve_.add_argument("--api-key", help=f"require this key (Authorization: Bearer KEY) on every route that "
                        f"completes or changes state (default: ${API_KEY_VARIABLE}, else none)")
    serve_.add_argument("--insecure", action="store_true", help="listen beyond loopback without an API key")
    serve_.add_argument("--rpc", metavar="HOST:PORT[,HOST:PORT]", help="offload every layer to these ggml-rpc-servers; "
                        "the model then runs in a supervised worker process, restarted when a server fails")
    serve_.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # the supervised process itself
    serve_.add_argument("--drain", type=bounded_float(0.1, 3600.0), metavar="SECONDS",
                        help="on SIGTERM or SIGINT, let running streams go on this long (default 10), then end them "
                        "with an error event")
    serve_.add_argument("--profile", action="append", help="profile JSON file to offer beside the embedded ones "
                        "(repeatable)")
    serve_.add_argument("--default", help="default steering: NAME, NAME+NAME or NAME:0.5+NAME (default: the only "
                        "profile, if there is one)")
    serve_.add_argument("--strength", type=STRENGTH, default=1.0, help="default strength")
    serve_.add_argument("--apply", default="all", choices=["all", "generation"], help="default token scope")
    serve_.add_argument("--n-ctx", type=positive_int, default=2048, help="context size of one request in tokens")
    serve_.add_argument("--parallel", type=positive_int, default=PARALLEL,
                        help="requests decoded together (continuous batching, each with its own steering); 1: one "
                        "at a time")
    serve_.add_argument("--kv-streams", action="store_true",
                        help="a KV stream per parallel request, llama-server's default layout (default: one KV "
                        "cache for all, which decoded as fast or faster in scripts/bench_server.py)")
    serve_.add_argument("--threads", type=positive_int, help="CPU threads (default: half the cores)")
    serve_.add_argument("--flash-attn", default="on", choices=["on", "off"],
                        help="flash attention (default on, as llama-server's auto resolves on CPU, CUDA and Metal)")
