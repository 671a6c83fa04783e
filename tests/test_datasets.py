"""The shipped datasets: sizes, format, and disjoint splits."""

from __future__ import annotations

import pytest

from austeer_gguf import datasets
from austeer_gguf.localization.pairs import load_pairs


@pytest.mark.parametrize("name", ["polite", "sentiment"])  # written by hand; generated sets below
def test_pair_sets_have_disjoint_train_and_test_splits(name):
    train = load_pairs(datasets.pairs_path(name, "train"))
    test = load_pairs(datasets.pairs_path(name, "test"))
    assert len(train) + len(test) >= 150 and len(test) >= 30
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    for pair in train + test:
        assert pair.positive.startswith(" ") and pair.negative.startswith(" ") and pair.positive != pair.negative


def test_prompt_sets_are_disjoint_across_splits():
    seen: dict[str, str] = {}
    for name in datasets.PROMPT_SETS:
        for split in ("train", "dev", "test"):
            try:
                prompts = datasets.prompts(name, split)
            except ValueError:
                continue
            assert prompts, f"{name}.{split} is empty"
            for prompt in prompts:
                assert prompt not in seen, f"{prompt!r} in {name}.{split} and {seen[prompt]}"
                seen[prompt] = f"{name}.{split}"
    assert len(seen) >= 300


def test_unknown_sets_are_refused():
    with pytest.raises(ValueError, match="no shipped pairs 'rude'"):
        datasets.pairs_path("rude", "train")
    with pytest.raises(ValueError, match="no shipped prompts"):
        datasets.prompts("neutral", "validation")


@pytest.mark.parametrize("name", ["polite-chat", "sentiment-large", "positive-chat", "concise-chat"])
def test_generated_pair_sets_are_large_and_disjoint_at_the_prompt_level(name):
    splits = {split: load_pairs(datasets.pairs_path(name, split)) for split in ("train", "dev", "test")
              if (datasets.data_dir() / "pairs" / f"{name}.{split}.jsonl").is_file()}  # the assistant sets: train
    assert len(splits["train"]) >= 1000
    keys = {split: {pair.messages or pair.prompt for pair in pairs} for split, pairs in splits.items()}
    for one, other in [("train", "dev"), ("train", "test"), ("dev", "test")]:
        assert not keys.get(one, set()) & keys.get(other, set())
    for pairs in splits.values():
        assert all(p.positive.startswith(" ") and p.negative.startswith(" ") for p in pairs)
        assert all(p.positive != p.negative for p in pairs)  # every pair has a contrast


def test_detox_items_pair_messages_of_one_split_with_openers_of_that_split():
    for split in ("dev", "test"):
        items = datasets.prompt_items("detox", split)
        sources = set(datasets.prompts("provocative", split)) | set(datasets.prompts("rude-request", split))
        assert {item["prompt"] for item in items} == sources
        assert all(item["prefill"] and not item["prefill"].endswith(" ") for item in items)
    openers = [{item["prefill"] for item in datasets.prompt_items("detox", split)} for split in ("dev", "test")]
    assert not openers[0] & openers[1]
    assert len(datasets.prompt_items("detox", "test")) >= 200
