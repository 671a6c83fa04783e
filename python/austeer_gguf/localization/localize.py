"""Localization: contrastive pairs in, a profile of the top-k atomic units (or a CAA control vector) out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import sites
from ..control_vector import ControlVector
from ..errors import InputError
from ..formats.model_file import ModelFile
from ..profile import MAX_UNITS, Profile, Unit
from .capture import PairCapture
from .pairs import Pair, data_sha256, load_pairs
from .reducers import MeanDifference, MomentumCounts, RankedUnit, rank_units


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


def _pairs(pairs: Sequence[Pair] | str | Path) -> list[Pair]:
    pairs = load_pairs(pairs) if isinstance(pairs, (str, Path)) else list(pairs)
    if not pairs:
        raise InputError("no pairs to localize on")
    return pairs


def localize(
    model_path: str | Path | ModelFile,
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
    pooled: bool = False,
) -> Localization:
    """Score every unit of the chosen sites by activation momentum over the pairs and keep the top k (`pooled`:
    of each reply's mean over its tokens from where the two differ, not of its last token)."""
    site_names = _site_names(sites)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_UNITS:
        raise InputError(f"k must be an integer in 1..{MAX_UNITS}, got {k!r}")
    if isinstance(pairs, (str, Path)):
        name = name or Path(pairs).name.split(".")[0]
    pairs = _pairs(pairs)
    Profile(name or "profile", alpha, ())  # refuse a bad name or alpha before the pass
    model = model_path if isinstance(model_path, ModelFile) else ModelFile.open(model_path)
    with PairCapture(model, pairs, site_names, chat=chat, max_tokens=max_tokens, share_prefix=share_prefix,
                     batch_tokens=batch_tokens, n_threads=n_threads, progress=progress,
                     description="localizing", pooled=pooled) as capture:
        counts = MomentumCounts.for_shape(capture.shape, site_names, pooled=pooled)
        capture.feed(counts)

    ranked = rank_units(counts, k)
    profile = Profile(
        name=name or "profile",
        alpha=alpha,
        units=tuple(Unit(u.layer, u.site, u.dim, u.score) for u in ranked),
        model=model.fingerprint,
        n_pairs=counts.n_pairs,
        data_sha256=data_sha256(pairs),
        extra={"sites": list(site_names), "k": k, "chat": chat, "max_tokens": max_tokens, "pooled": pooled,
               "truncated_pairs": capture.truncated, "skipped_pairs": capture.skipped},
    )
    return Localization(profile, ranked, counts, counts.n_pairs, capture.truncated, capture.skipped,
                        capture.seconds)


def compute_control_vector(model_path: str | Path | ModelFile, pairs: Sequence[Pair] | str | Path, *,
                           layers: tuple[int, int] | None = None, chat: bool = False, max_tokens: int = 512,
                           n_threads: int | None = None, progress: bool = True) -> ControlVector:
    """CAA: the mean of pos - neg at l_out-L over the pairs, for every layer L >= 1 (or those in `layers`)."""
    with PairCapture(model_path, _pairs(pairs), ["layer"], chat=chat, max_tokens=max_tokens, n_threads=n_threads,
                     progress=progress, description="control vector") as capture:
        if layers and not 1 <= layers[0] <= layers[1] < capture.shape.n_layers:
            raise InputError(f"layers {layers[0]}-{layers[1]} are outside this model's 1-{capture.shape.n_layers - 1} "
                             "(layer 0 takes no control vector)")
        difference = MeanDifference.for_shape(capture.shape, "layer")
        capture.feed(difference)
    vector = difference.control_vector(capture.shape.architecture)
    return vector.restricted(*layers) if layers else vector


def _site_names(choice: str | Sequence[str]) -> tuple[str, ...]:
    return sites.parse(choice if isinstance(choice, str) else tuple(choice))
