"""A behaviour of the user's own: `build MODEL pairs.jsonl --prompts prompts.jsonl --instruction TEXT`.

The pairs' judge is checked on held-out pairs (a behaviour whose sides differ in words is learned; pairs whose
sides are shuffled are refused), the files are checked before any model is loaded, and a build on the tiny
model (whose replies mean nothing: the plumbing, not the behaviour) scores every reply by the judge, writes the
profile and a card that says how replies were scored.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from austeer_gguf.errors import InputError
from austeer_gguf.evaluation.pairjudge import MIN_ACCURACY, PairJudge
from austeer_gguf.evaluation.tasks import user_behaviour
from austeer_gguf.formats.profiles import read_profile
from austeer_gguf.localization.pairs import Pair

TOPICS = ["the weather", "your weekend", "a new phone", "the train times", "a recipe for soup", "the meeting",
          "my garden", "a book you liked", "the football match", "learning to swim", "a trip to the coast",
          "the new library", "fixing a bike", "a birthday present", "the bus strike", "painting a room"]
FORMAL = ["Certainly. I would be pleased to tell you about {t}.", "Thank you for asking; regarding {t}, I shall "
          "explain.", "Of course. Allow me to describe {t} in some detail.", "I would be delighted to discuss {t} "
          "with you."]
CASUAL = ["yeah sure, {t} lol, whatever", "ugh {t}? ok fine i guess lol", "haha {t}, dunno, kinda meh tbh",
          "lol ok so {t} is like, whatever man"]


def own_pairs(shuffled: bool = False, n: int = 64) -> list[dict]:
    rng = random.Random(1)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        wanted, unwanted = rng.choice(FORMAL).format(t=topic), rng.choice(CASUAL).format(t=topic)
        if shuffled and rng.random() < 0.5:
            wanted, unwanted = unwanted, wanted
        rows.append({"messages": [{"role": "user", "content": f"Tell me about {topic} ({i})."}],
                     "positive": " " + wanted, "negative": " " + unwanted})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def prompts(n: int = 18) -> list[dict]:
    return [{"prompt": f"What do you think about {TOPICS[i % len(TOPICS)]}, honestly? ({i})"} for i in range(n)]


def as_pairs(rows: list[dict]) -> list[Pair]:
    return [Pair("", row["positive"], row["negative"]) for row in rows]


def test_the_pairs_judge_learns_sides_that_differ_in_words_and_is_checked_on_pairs_it_never_saw():
    judge = PairJudge.fit(as_pairs(own_pairs()))
    assert judge.held_out_accuracy >= 0.9 and judge.n_held_out == 13 and judge.n_train == 51  # 64 pairs
    unwanted = judge(["Certainly. I would be pleased to describe the harbour.", "lol ok whatever man, the harbour"])
    assert unwanted[0] < 0.5 < unwanted[1]
    assert "balanced accuracy" in judge.describe()


def test_pairs_whose_sides_do_not_differ_consistently_are_refused():
    with pytest.raises(InputError, match=rf"balanced accuracy 0\.\d+ \(< {MIN_ACCURACY}\).*built-in --metric"):
        PairJudge.fit(as_pairs(own_pairs(shuffled=True, n=200)))
    with pytest.raises(InputError, match="at least 40 pairs, got 10"):
        PairJudge.fit(as_pairs(own_pairs(n=10)))


def test_an_own_behaviour_splits_its_prompts_and_keeps_them_apart_from_the_pairs(tmp_path):
    pairs = write_jsonl(tmp_path / "formal.jsonl", own_pairs())
    task = user_behaviour(pairs, write_jsonl(tmp_path / "p.jsonl", prompts()), instruction="Be formal.")
    assert task.name == "formal" and task.chat and task.behaviour == "unwanted_rate" and task.sign == -1
    assert len(task.dev) == 6 and len(task.test) == 12 and not set(task.dev) & set(task.test)
    assert task.judge(["lol whatever"])[0] > 0.5 and "balanced accuracy" in task.provenance
    sentiment = user_behaviour(pairs, tmp_path / "p.jsonl", instruction="Be formal.", metric="sentiment")
    assert sentiment.judge is None and sentiment.behaviour == "sentiment" and sentiment.sign == 1

    reused = write_jsonl(tmp_path / "reused.jsonl", prompts() + [{"prompt": "Tell me about the weather (0)."}])
    with pytest.raises(InputError, match="1 of the prompts in .* are prompts of the pairs"):
        user_behaviour(pairs, reused, instruction="Be formal.")
    with pytest.raises(InputError, match="has 5 distinct prompts; the build needs at least 12"):
        user_behaviour(pairs, write_jsonl(tmp_path / "few.jsonl", prompts(5) * 3), instruction="Be formal.")
    with pytest.raises(InputError, match="needs --instruction"):
        user_behaviour(pairs, tmp_path / "p.jsonl", instruction=" ")


@pytest.mark.parametrize("extra, message", [
    ([], "a behaviour of your own needs --prompts FILE"),
    (["--prompts", "{prompts}", "--metric", "loud"], "argument --metric: invalid choice: 'loud'"),
    (["--prompts", "{prompts}"], "needs --instruction"),
])
def test_an_own_behaviour_without_what_it_needs_is_refused_before_the_model_loads(tiny_f32, tmp_path, extra, message):
    pairs = write_jsonl(tmp_path / "formal.jsonl", own_pairs())
    listed = write_jsonl(tmp_path / "p.jsonl", prompts())
    args = [arg.format(prompts=listed) for arg in extra]
    done = subprocess.run([sys.executable, "-m", "austeer_gguf", "build", str(tiny_f32), str(pairs), *args, "-o",
                           str(tmp_path / "out.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "out.build.json").exists()


def test_a_built_in_behaviour_refuses_the_flags_of_an_own_one(tiny_f32, tmp_path):
    done = subprocess.run([sys.executable, "-m", "austeer_gguf", "build", str(tiny_f32), "detox", "--prompts",
                           "x.jsonl"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "--prompts is for a behaviour of your own" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_build_of_an_own_behaviour_scores_replies_by_its_judge_and_says_so(tiny_f32, tmp_path):
    pairs = write_jsonl(tmp_path / "formal.jsonl", own_pairs())
    listed = write_jsonl(tmp_path / "p.jsonl", prompts(30))
    output = tmp_path / "tiny.formal.json"
    output.write_text("an earlier build's profile")  # must not pass for this build's
    done = subprocess.run([sys.executable, "-m", "austeer_gguf", "build", str(tiny_f32), str(pairs), "--prompts",
                           str(listed), "--instruction", "Answer formally.", "--minutes", "1", "--threads", "2",
                           "-o", str(output)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    card = output.with_suffix(".md").read_text()
    assert card.startswith("# formal on tiny-f32.gguf")
    assert "scored by an n-gram judge fitted on the replies of 51 of the pairs" in card
    assert "unwanted rate (the pairs' judge)" in card
    assert f"--prompts {listed} --metric judge --instruction 'Answer formally.'" in card  # the command reruns it
    data = json.loads(output.with_suffix(".build.json").read_text())
    assert data["identity"]["own"]["metric"] == "judge" and len(data["identity"]["own"]["files"]) == 2
    items = [item for method in data["build"]["test_items"].values() for item in method]
    assert items and all(0.0 <= item["unwanted"] <= 1.0 for item in items)
    if output.exists():
        assert read_profile(output).extra["task"] == "formal"
    else:  # the winner may steer nothing on a model whose replies mean nothing; the build says so
        assert "no profile written" in done.stderr
