"""The site registry: where in llama.cpp's compute graph atomic units live, one record per site.

A site is a family of graph tensors named ``<tensor>-<layer>`` (0-based layer); one unit is one coordinate
of its rows. Everything that needs to know about sites asks this registry: the native callback (it receives
the tensor prefixes from here), profile validation, the width check, the metadata encoding, the exports and
`explain`. Adding a site is one `register` call (see tests/test_site_registry.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from .errors import InputError


@dataclass(frozen=True)
class Hyperparameters:
    """The model sizes site widths are computed from (read from a model file by `formats.model_file`)."""

    n_embd: int
    n_head: int
    head_dim: int  # of the values: attention.value_length when present, else n_embd / n_head
    n_ff: int
    n_expert: int = 0  # experts per FFN (mixture-of-experts models), 0 for a dense FFN


MAX_WIDTH = 1 << 20  # no model has a site wider than this; a larger value is a damaged file


@dataclass(frozen=True)
class Site:
    """One site.

    `weight` and `axis` say which weight of the layer the coordinate belongs to: "input" = the unit scales
    an input column of `blk.L.<weight>.weight` (the coordinate enters it), "output" = an output row (the
    coordinate leaves it); None = the residual stream, which no weight owns. Exports fold units into that
    weight, and `explain` follows the coordinate into the residual stream through it.
    """

    name: str
    letter: str  # one letter per unit in embedded profiles
    tensor: str  # graph tensor prefix
    width: Callable[[Hyperparameters], int]
    weight: str | None = None
    axis: Literal["input", "output"] | None = None
    first_in_layer: bool = False  # only the first tensor of that name in a layer is this site
    description: str = ""
    # In a model whose FFN is a mixture of experts the site may be another graph tensor, owned by another
    # weight (one matrix per expert): llama.cpp names the experts' summed output `ffn_moe_out`, and the first
    # `ffn_out` of such a layer, where there is one, is already the residual sum.
    expert_tensor: str | None = None
    expert_weight: str | None = None

    def graph_tensor(self, experts: bool) -> str:
        """The graph tensor prefix of this site in a dense model, or in one with expert FFNs."""
        return self.expert_tensor if experts and self.expert_tensor else self.tensor

    def weight_in(self, experts: bool) -> str | None:
        """The weight a unit of this site belongs to (see `weight`) in a dense or expert model."""
        return self.expert_weight if experts and self.expert_tensor else self.weight


_REGISTRY: dict[str, Site] = {}


def register(site: Site) -> Site:
    """Add a site. Its name, letter and tensor prefix must be new."""
    for other in _REGISTRY.values():
        tensors = {site.tensor, site.expert_tensor} - {None}
        if site.name == other.name or site.letter == other.letter or tensors & {other.tensor, other.expert_tensor}:
            raise ValueError(f"site {site.name!r} clashes with the registered site {other.name!r}")
    if len(site.letter) != 1 or not site.tensor or "-" in site.tensor:
        raise ValueError(f"site {site.name!r}: the letter must be one character and the tensor prefix must "
                         "be a non-empty name without '-'")
    if (site.weight is None) != (site.axis is None):
        raise ValueError(f"site {site.name!r}: give both weight and axis, or neither")
    _REGISTRY[site.name] = site
    return site


def unregister(name: str) -> None:
    """Remove a site added with `register` (the three built-in sites stay)."""
    if name in SITES:
        raise ValueError(f"the built-in site {name!r} cannot be removed")
    _REGISTRY.pop(name, None)


def get(name: str) -> Site:
    site = _REGISTRY.get(name)
    if site is None:
        raise InputError(f"unknown site {name!r}; sites are {', '.join(_REGISTRY)}")
    return site


def names() -> tuple[str, ...]:
    """Registered site names in registry order (the order ties are broken in, after the layer)."""
    return tuple(_REGISTRY)


def all_sites() -> tuple[Site, ...]:
    return tuple(_REGISTRY.values())


def code(name: str) -> int:
    """The site's index in the registry: the code the native state knows it by."""
    return names().index(get(name).name)


def by_letter(letter: str) -> Site:
    for site in _REGISTRY.values():
        if site.letter == letter:
            return site
    raise InputError(f"unknown site letter {letter!r}")


def tensor_name(site: str, layer: int, experts: bool = False) -> str:
    """The llama.cpp graph tensor that holds `site` of `layer`, e.g. ``kqv_out-3``."""
    return f"{get(site).graph_tensor(experts)}-{layer}"


def parse(sites: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A site choice ("attn", "all", or several names) as registry-ordered names."""
    chosen = [sites] if isinstance(sites, str) else list(sites)
    if chosen == ["all"]:
        return names()
    unknown = [name for name in chosen if name not in _REGISTRY]
    if unknown or not chosen:
        raise InputError(f"unknown site {', '.join(unknown) or '(none)'}; choose {', '.join(names())} or all")
    return tuple(name for name in names() if name in chosen)


SITES = ("attn", "ffn", "layer")  # the built-in sites
register(Site("attn", "a", "kqv_out", lambda h: h.n_head * h.head_dim, weight="attn_output", axis="input",
              description="attention output before the output projection (one column of attn_output)"))
register(Site("ffn", "f", "ffn_out", lambda h: h.n_embd, weight="ffn_down", axis="output", first_in_layer=True,
              description="FFN block output before the residual add (one row of ffn_down)",
              expert_tensor="ffn_moe_out", expert_weight="ffn_down_exps"))
register(Site("layer", "l", "l_out", lambda h: h.n_embd,
              description="the residual stream after the layer"))


@dataclass(frozen=True)
class ModelShape:
    """What a profile is checked against: layer count and the row width of each site tensor (read from a model
    file by `formats.model_file`)."""

    architecture: str
    n_layers: int
    widths: dict[str, int]
    experts: int = 0  # experts per FFN; 0: a dense FFN
    # Layers at which the model's compute graph has no tensor for a site (found by the engine at load,
    # `HookedLlama`): units there would do nothing, so they are refused.
    missing: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, architecture: str, n_layers: int, hyper: Hyperparameters) -> ModelShape:
        """The shape of a model with these sizes: every registered site's width."""
        return cls(architecture, n_layers, {site.name: site.width(hyper) for site in all_sites()},
                   experts=hyper.n_expert)

    def describe_range(self, site: str) -> str:
        return f"layers 0..{self.n_layers - 1}, dims 0..{self.widths[site] - 1} for site {site!r}"

    def tensor(self, site: str, layer: int) -> str:
        """The graph tensor of `site` at `layer` in this model."""
        return tensor_name(site, layer, self.experts > 0)

    def weight(self, site: str) -> str | None:
        """The weight units of `site` belong to in this model (None: the residual stream)."""
        return get(site).weight_in(self.experts > 0)

    def check_present(self, site: str, layers: Iterable[int] | None = None) -> None:
        """InputError when the compute graph lacks `site` at any of `layers` (all layers when None)."""
        absent = sorted(set(self.missing.get(site, ())) & set(range(self.n_layers) if layers is None else layers))
        if absent:
            raise InputError(f"this {self.architecture} model's compute graph has no {self.tensor(site, absent[0])} "
                             f"tensor{'' if len(absent) == 1 else 's'} (site {site!r} at layer"
                             f"{'' if len(absent) == 1 else 's'} {layer_ranges(absent)}): units there would do "
                             f"nothing. Use the sites it has: {', '.join(self.present_sites()) or 'none'}")

    def present_sites(self) -> tuple[str, ...]:
        """Sites the compute graph has at every layer."""
        return tuple(name for name in self.widths if not self.missing.get(name))


def layer_ranges(layers: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" ("-" when empty)."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs) or "-"


MAX_LAYERS = 4096  # the native core's bound as well
