"""The package's layers: no module imports one above its own, and capture never imports the runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import austeer_gguf

PACKAGE = Path(austeer_gguf.__file__).parent
# Bottom up. A module may import modules of its own layer (within its subpackage) and of any layer below.
LAYERS = [
    {"_version", "_native", "errors", "jsonfile", "sites", "profile", "control_vector", "fingerprint", "setting",
     "conversation"},  # values, without I/O of their own
    {"ggufio"},
    {"formats", "models", "datasets"},
    {"engine"},
    {"localization", "runtime"},  # siblings: capture runs on the engine, not on the runtime
    {"exports"},
    {"evaluation"},
    {"apps", "__main__"},
]
LEVEL = {name: index for index, layer in enumerate(LAYERS) for name in layer}
APART = {("localization", "runtime"), ("runtime", "localization")}  # same layer, neither may import the other


def top(module: str) -> str:
    """The layer name of a dotted module inside the package ("localization.capture" -> "localization")."""
    return module.split(".")[0]


def imports_of(path: Path) -> set[str]:
    """Modules of the package that `path` imports anywhere (function bodies too), relative to the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    package = list(parts[:-1])  # the package a relative import starts from (an __init__ is its own package)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found.update(".".join([*base, alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("austeer_gguf."):
            found.add(node.module.removeprefix("austeer_gguf."))
        elif isinstance(node, ast.Import):
            found.update(alias.name.removeprefix("austeer_gguf.") for alias in node.names
                         if alias.name.startswith("austeer_gguf."))
    return found


def test_every_module_belongs_to_a_layer():
    entries = {path.name.split(".")[0] for path in PACKAGE.iterdir()
               if (path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()))}
    assert entries - {"__init__"} <= set(LEVEL), entries - {"__init__"} - set(LEVEL)


def test_no_import_runs_back_up_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = top(".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        if source == "__init__":
            continue  # the package's lazy public names reach every layer on purpose
        for target in imports_of(path):
            layer = top(target)
            assert layer in LEVEL, f"{path.relative_to(PACKAGE)} imports {target}, which belongs to no layer"
            if LEVEL[layer] > LEVEL[source] or (source, layer) in APART:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_sees_imports_inside_functions():
    found = imports_of(PACKAGE / "apps" / "cli" / "files.py")
    assert "formats.embedded" in found and "exports.bake" in found
    found = imports_of(PACKAGE / "localization" / "capture.py")
    assert "engine.decoder" in found and not any(top(name) == "runtime" for name in found)
