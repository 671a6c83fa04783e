"""The main job on the built-in default model: unsteered vs steered completions side by side.

Run through `scripts/demo`, which sets everything up first.
"""

from __future__ import annotations

import argparse

from . import models
from .profile import Profile, Unit
from .steered_llama import SteeredLlama

PROMPTS = [
    "Tell me what you think of my cooking.",
    "My neighbour plays loud music every night. What should I say to him?",
    "Describe your ideal weekend.",
]

# A hand-written profile until localization lands: a few residual units of the middle layers.
HAND_WRITTEN = Profile("hand-written", alpha=8.0, units=[
    Unit(12, "ffn", 10, 0.5), Unit(14, "ffn", 100, -0.5), Unit(16, "attn", 42, 0.5),
])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    path = models.fetch(models.DEFAULT_MODEL)
    llm = SteeredLlama(str(path), profile=HAND_WRITTEN, n_ctx=512, n_threads=2, verbose=False)
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        texts = {}
        for label, on in (("unsteered", False), ("steered", True)):
            llm.steering.enabled = on
            reply = llm.create_chat_completion(messages, max_tokens=args.max_tokens, temperature=0.0)
            texts[label] = reply["choices"][0]["message"]["content"].strip()
        print(f"\n### {prompt}\n[unsteered] {texts['unsteered']}\n[steered]   {texts['steered']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
