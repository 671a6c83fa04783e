"""Localization: contrastive pairs in, a profile of the top-k atomic units out."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .capture import ActivationCapture, PairActivations
from .fingerprint import fingerprint_file
from .gguf_file import scan
from .momentum import MomentumCounts, RankedUnit, rank_units
from .pairs import Pair, chat_renderer, data_sha256, load_pairs, tokenize_pairs
from .profile import Profile, Unit
from .sites import SITES

FLOAT_TYPES = {"F32", "F16", "BF16"}


@dataclass
class Localization:
    profile: Profile
    ranked: list[RankedUnit]
    counts: MomentumCounts
    n_pairs: int
    truncated: int
    skipped: int
    seconds: float

    @property
    def pairs_per_second(self) -> float:
        return self.n_pairs / self.seconds if self.seconds > 0 else float("inf")

    def table(self, top: int = 20) -> str:
        """The top units with r_pos and r_neg, as a text table."""
        lines = [f"{'rank':>4} {'layer':>5} {'site':>5} {'dim':>5} {'r_pos':>6} {'r_neg':>6} {'score':>7}"]
        for unit in self.ranked[:top]:
            lines.append(f"{unit.rank:4d} {unit.layer:5d} {unit.site:>5} {unit.dim:5d} {unit.r_pos:6.3f} "
                         f"{unit.r_neg:6.3f} {unit.score:+7.3f}")
        return "\n".join(lines)


def parse_sites(sites: str | Sequence[str]) -> tuple[str, ...]:
    names = [sites] if isinstance(sites, str) else list(sites)
    if names == ["all"]:
        return SITES
    unknown = [name for name in names if name not in SITES]
    if unknown or not names:
        raise ValueError(f"unknown site {', '.join(unknown) or '(none)'}; choose attn, ffn, layer or all")
    return tuple(site for site in SITES if site in names)


def warn_if_quantized(model_path: str | Path) -> None:
    types = {tensor.ggml_type.name for tensor in scan(model_path).tensors if len(tensor.shape) >= 2}
    quantized = sorted(types - FLOAT_TYPES)
    if quantized:
        warnings.warn(f"{model_path} has quantized weights ({', '.join(quantized)}); localization is meant for the "
                      "float model. Run `python -m austeer_gguf dequantize` first for units that match it.",
                      stacklevel=3)


@dataclass
class CaptureRun:
    """What `captured_pairs` did, filled in as it runs."""

    n_pairs: int = 0
    truncated: int = 0
    skipped: int = 0
    seconds: float = 0.0
    n_layers: int = 0
    widths: dict[str, int] | None = None


def captured_pairs(model_path: str | Path, pairs: Sequence[Pair], sites: Sequence[str], run: CaptureRun, *,
                   chat: bool = False, max_tokens: int = 512, share_prefix: bool = True,
                   batch_tokens: int | None = None, n_threads: int | None = None, progress: bool = True,
                   description: str = "capturing") -> Iterator[PairActivations]:
    """Last-token activations of both texts of every pair, group by group; `run` records the counts."""
    warn_if_quantized(model_path)
    with ActivationCapture(model_path, batch_tokens=batch_tokens or 2 * max_tokens, n_threads=n_threads) as capture:
        render = chat_renderer(capture.llm) if chat else None
        tokenized = tokenize_pairs(pairs, capture.tokenize, max_tokens=min(max_tokens, capture.max_pair_tokens),
                                   render_prompt=render)
        if not tokenized.pairs:
            raise ValueError("every pair renders identically on both sides: nothing to compare")
        run.truncated, run.skipped = tokenized.truncated, tokenized.identical
        run.n_layers, run.widths = capture.shape.n_layers, {site: capture.shape.widths[site] for site in sites}
        start = time.perf_counter()
        with tqdm(total=len(tokenized.pairs), unit="pair", desc=description, disable=not progress) as bar:
            for group in capture.pairs(tokenized.pairs, sites, share_prefix=share_prefix):
                yield group
                run.n_pairs += len(group.indices)
                bar.update(len(group.indices))
        run.seconds = time.perf_counter() - start


def localize(
    model_path: str | Path,
    pairs: Sequence[Pair] | str | Path,
    *,
    sites: str | Sequence[str] = "attn",
    k: int = 10,
    alpha: float = 5.0,
    name: str | None = None,
    chat: bool = False,
    max_tokens: int = 512,
    share_prefix: bool = True,
    batch_tokens: int | None = None,
    n_threads: int | None = None,
    progress: bool = True,
) -> Localization:
    """Score every unit of the chosen sites by activation momentum over the pairs and keep the top k."""
    site_names = parse_sites(sites)
    if not 1 <= k <= 100_000:
        raise ValueError(f"k must be at least 1, got {k}")
    if isinstance(pairs, (str, Path)):
        name = name or Path(pairs).name.split(".")[0]
        pairs = load_pairs(pairs)
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no pairs to localize on")

    run = CaptureRun()
    counts: MomentumCounts | None = None
    for group in captured_pairs(model_path, pairs, site_names, run, chat=chat, max_tokens=max_tokens,
                                share_prefix=share_prefix, batch_tokens=batch_tokens, n_threads=n_threads,
                                progress=progress, description="localizing"):
        counts = counts or MomentumCounts(run.n_layers, dict(run.widths or {}))
        for site in site_names:
            counts.add(site, group.positive[site], group.negative[site])
        counts.count_pairs(len(group.indices))
    assert counts is not None

    ranked = rank_units(counts, k)
    profile = Profile(
        name=name or "profile",
        alpha=alpha,
        units=tuple(Unit(u.layer, u.site, u.dim, u.score) for u in ranked),
        model=fingerprint_file(model_path),
        n_pairs=counts.n_pairs,
        data_sha256=data_sha256(pairs),
        extra={"sites": list(site_names), "k": k, "chat": chat, "max_tokens": max_tokens,
               "truncated_pairs": run.truncated, "skipped_pairs": run.skipped},
    )
    return Localization(profile, ranked, counts, counts.n_pairs, run.truncated, run.skipped, run.seconds)
