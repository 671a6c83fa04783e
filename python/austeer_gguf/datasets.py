"""The datasets shipped with the package (see data/README.md for their provenance)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

PAIR_SETS = ("polite", "sentiment", "polite-chat", "sentiment-large", "positive-chat", "concise-chat")
PROMPT_SETS = ("neutral", "provocative", "harmless", "rude-request", "harmless-large", "neutral-large", "opinion",
               "question")
DERIVED_PROMPT_SETS = ("detox",)  # built from the sets above (same split), with a reply opener each


def data_dir() -> Path:
    return Path(str(resources.files("austeer_gguf") / "data"))


def pairs_path(name: str, split: str) -> Path:
    """A contrastive-pairs JSONL: name in PAIR_SETS, split train or test (dev too for the generated sets)."""
    path = data_dir() / "pairs" / f"{name}.{split}.jsonl"
    if not path.is_file():
        raise ValueError(f"no shipped pairs {name!r} split {split!r}; pairs: {', '.join(PAIR_SETS)} (train, test)")
    return path


def prompt_items(name: str, split: str) -> list[dict]:
    """Evaluation items ({"prompt", and "prefill" for detox}): name in PROMPT_SETS or DERIVED_PROMPT_SETS, split
    train, dev or test (as shipped)."""
    path = data_dir() / "prompts" / f"{name}.{split}.jsonl"
    if not path.is_file():
        raise ValueError(f"no shipped prompts {name!r} split {split!r}; prompts: "
                         f"{', '.join(PROMPT_SETS + DERIVED_PROMPT_SETS)}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prompts(name: str, split: str) -> list[str]:
    """Evaluation prompts (their text): name in PROMPT_SETS or DERIVED_PROMPT_SETS."""
    return [item["prompt"] for item in prompt_items(name, split)]
