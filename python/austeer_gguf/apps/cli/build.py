"""`build`: a steering profile for a behaviour on the user's own model, measured, in the time given."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ... import models
from ...errors import InputError
from .common import MODEL_HELP, add_force, bounded_float, command, positive_int

MAX_MINUTES = 24 * 60
BUILT_IN = ("detox", "positive", "concise", "sentiment")


def cmd_build(args: argparse.Namespace) -> int:
    from ...engine.hooked import HookedLlama
    from ...evaluation import plan as planning
    from ...evaluation.build import BuildConfig, build, capture_evidence, trial_counts
    from ...evaluation.card import write_card
    from ...evaluation.methods import METHODS
    from ...evaluation.record import BuildRecord
    from ...formats.embedded import embed_profiles
    from ...formats.model_file import ModelFile
    from ...formats.profiles import fingerprint_to_dict, write_profile
    from ...ggufio.atomic import check_output

    source = models.resolve(args.model)
    task, own = behaviour_task(args)
    model_file = ModelFile.open(source)
    output = check_output(Path(args.output or f"{source.stem}.{task.name}.json"), [source], force=args.force)
    steered_model = (check_output(output.with_suffix(".gguf"), [source], force=args.force) if args.embed else None)
    weights = models.float_copy(args.model) if args.model in models.MODELS else source
    # Methods added since a record was saved are measured when it resumes: results are kept per trial.
    identity = {"model": fingerprint_to_dict(model_file.fingerprint), "behaviour": task.name, "minutes": args.minutes}
    if own:  # a build resumes only from the same files, metric and instruction
        identity["own"] = {"files": [file_digest(Path(path)) for path in (args.behaviour, args.prompts)],
                           "metric": args.metric, "instruction": args.instruction}
    record = BuildRecord(output, identity, fresh=args.fresh)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    def open_model() -> HookedLlama:
        return HookedLlama.for_evaluation(source, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)

    llm = open_model()
    config = BuildConfig(threads=args.threads, max_tokens=task.reply_tokens)
    evidence = record.load_evidence(llm.shape) if record.plan else None
    resuming = evidence is not None
    try:
        if resuming:
            plan = record.plan
            log(f"resuming the build saved in {record.path} ({len(record.results)} results kept)")
            if evidence.pooled is None:  # saved before the capture pass pooled: the same pairs again
                llm.close()
                saved = evidence
                evidence, seconds = capture_evidence(weights, task.train[: saved.counts.n_pairs], config.sites,
                                                     saved.shape, threads=args.threads)
                llm = open_model()
                same = all(np.array_equal(saved.counts.positive[site], evidence.counts.positive[site])
                           and np.array_equal(saved.counts.negative[site], evidence.counts.negative[site])
                           for site in saved.counts.sites)
                if not same:
                    raise InputError(f"the pairs no longer give the counts saved in {record.evidence_path}: "
                                     "run with --fresh to start the build over")
                record.save_evidence(evidence)
                log(f"captured the same {evidence.counts.n_pairs} pairs again, position-pooled too, in {seconds:.0f} s")
        else:
            probe = planning.probe(llm, task, config.max_tokens)
            config = dataclasses.replace(config, kl_budgets=planning.kl_budgets_for(args.minutes, config.kl_budgets))
            log(f"{source.name}: {probe.seconds_per_item:.2f} s per prompt; capturing pairs on {weights.name}")
            shape = llm.shape
            llm.close()  # the capture pass opens the model itself: one copy in memory at a time (7B Q4: 4.4 GB)
            evidence, capture_seconds = capture_evidence(weights, task.train, config.sites, shape,
                                                         threads=args.threads,
                                                         seconds=planning.CAPTURE_SHARE * args.minutes * 60)
            llm = open_model()
            record.save_evidence(evidence)
            counts = trial_counts(METHODS, evidence, config)
            sized = planning.size(args.minutes, time.perf_counter() - started, probe, task,
                                  dev_trials=counts.dev_trials, calibrated_points=counts.calibrated_points,
                                  test_runs=counts.methods, kl_budgets=config.kl_budgets)
            plan = {**sized.to_dict(), "pairs": evidence.counts.n_pairs, "capture_seconds": capture_seconds}
            record.set_plan(plan)
            log(f"captured {evidence.counts.n_pairs} pairs in {capture_seconds:.0f} s; plan: {sized.describe()}")
            reading = f"will it steer? {evidence.reading().describe()}"
            log(reading)
            if args.plan:
                print(sized.describe())
                print(reading)
                return 0
        # A fresh build lets test grow into the minutes dev leaves; a resumed one keeps the size its record has.
        deadline = None if resuming else started + args.minutes * 60
        config = dataclasses.replace(config, kl_budgets=tuple(plan["kl_budgets"]), dev_limit=plan["dev_items"],
                                     test_limit=plan["test_items"], deadline=deadline,
                                     seconds_per_item=plan["seconds_per_item"])
        result = build(llm, weights, task, config, name=source.name, evidence=evidence, record=record, log=log)
    except KeyboardInterrupt:
        log(f"interrupted: {len(record.results)} results are saved in {record.path}; run the same command to "
            "resume (--fresh starts over)")
        raise
    finally:
        llm.close()
    result.capture_seconds = plan["capture_seconds"]
    result.seconds, result.runs = record.seconds, record.runs
    record.write(build=result.to_dict())
    card = write_card(result, task, output.with_suffix(".md"), model=source.name, plan=record.plan,
                      command=shlex.join(["python", "-m", "austeer_gguf", "build", str(args.model), args.behaviour,
                                          "--minutes", f"{args.minutes:g}", *(
                                              ["--prompts", args.prompts, "--metric", args.metric, "--instruction",
                                               args.instruction] if own else [])]))
    print(card)
    if result.winner is None or result.winner not in result.profiles:
        for stale in (output, steered_model):  # an earlier build's profile must not pass for this one's
            if stale is not None:
                stale.unlink(missing_ok=True)
        log(f"no profile written: {result.winner or 'no method'} has none to ship (see {card})")
        return 0
    comparison = result.comparisons[result.winner]
    profile = dataclasses.replace(result.profiles[result.winner], name=task.name, model=model_file.fingerprint,
                                  extra={"method": result.winner, "setting": result.chosen[result.winner]["setting"],
                                         "task": task.name, "meets_target": comparison["meets_target"],
                                         "report": card.name})
    print(write_profile(profile, output))
    if steered_model is not None:
        print(embed_profiles(model_file, [profile], steered_model))
    return 0


def behaviour_task(args: argparse.Namespace):
    """The task a build measures, and whether it is the user's own (pairs JSONL + --prompts)."""
    from ...evaluation.tasks import TASKS, GenerationTask, load_task, user_behaviour

    own_flags = [flag for flag, value in (("--prompts", args.prompts), ("--instruction", args.instruction))
                 if value is not None]
    if args.behaviour in TASKS:
        if own_flags or args.metric != "judge":
            raise InputError(f"{', '.join(own_flags) or '--metric'} is for a behaviour of your own (pairs JSONL); "
                             f"{args.behaviour!r} has its own prompts and metric")
        task = load_task(args.behaviour)
        if not isinstance(task, GenerationTask):
            raise InputError(f"{args.behaviour!r} is not a generation behaviour: build makes profiles for replies "
                             f"({', '.join(BUILT_IN)}, or your own pairs)")
        return task, False
    if not Path(args.behaviour).is_file():
        raise InputError(f"unknown behaviour {args.behaviour!r}: use {', '.join(BUILT_IN)}, or your own pairs JSONL "
                         "with --prompts FILE and --instruction TEXT")
    if args.prompts is None:
        raise InputError("a behaviour of your own needs --prompts FILE: requests to evaluate replies on, one "
                         '{"prompt": ...} a line, none of them in the pairs')
    return user_behaviour(Path(args.behaviour), Path(args.prompts), instruction=args.instruction or "",
                          metric=args.metric), True


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def register(commands) -> None:
    parser = command(commands, "build", "build, measure and write a steering profile for a behaviour on a model, "
                     "with its report card", cmd_build)
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("behaviour", help="detox, positive, concise or sentiment; or your own pairs JSONL "
                        "(positive = the wanted reply), with --prompts and --instruction")
    parser.add_argument("--prompts", help="your own behaviour: JSONL of requests to evaluate on ({\"prompt\": ...} "
                        "a line; a third dev, the rest test)")
    parser.add_argument("--instruction", help="your own behaviour: one sentence asking the model for it (the "
                        "asking-the-model baseline)")
    parser.add_argument("--metric", default="judge", choices=("judge", "sentiment", "rude", "words"),
                        help="your own behaviour: how replies are scored: an n-gram judge fitted on the pairs "
                        "(default), VADER sentiment (higher), the rudeness judge or words per reply (lower)")
    parser.add_argument("--minutes", type=bounded_float(1.0, MAX_MINUTES), default=10.0,
                        help="time to spend: sizes the capture, dev and test sets")
    parser.add_argument("-o", "--output", help="profile JSON to write (default: <model>.<behaviour>.json); the "
                        "report card is written beside it (.md, .png), with the saved results (.build.json)")
    parser.add_argument("--embed", action="store_true", help="also write the model with the profile embedded "
                        "(the output path with .gguf)")
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming a saved build")
    parser.add_argument("--plan", action="store_true", help="only time a few prompts and the capture pass, and say "
                        "what the minutes buy (the build resumes from there when run without --plan)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads (default: half the cores)")
    add_force(parser, "replace read-only outputs")
