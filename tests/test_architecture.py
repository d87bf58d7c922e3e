"""The shape of the code: modules use each other only through public names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tpwng"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(module: str, tree: ast.Module) -> list[str]:
    """Private names of other tpwng modules that `module` imports or reaches into."""
    found = []
    aliases: dict[str, str] = {}  # local name -> tpwng module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tpwng"):
            for a in node.names:
                if node.module != module and _private(a.name):
                    found.append(f"{module}: from {node.module} import {a.name}")
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("tpwng"):
                    aliases[a.asname or a.name] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in aliases
                and aliases[node.value.id] != module):
            found.append(f"{module}: {node.value.id}.{node.attr}")
    return found


def imported_modules(tree: ast.Module) -> list[str]:
    """Every module a tree imports by absolute name, at any depth (deferred imports too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return found


def test_no_module_uses_another_modules_private_names():
    found = [use for name, tree in _modules().items() for use in private_uses(name, tree)]
    assert found == []


def test_the_check_finds_private_uses():
    tree = ast.parse("from tpwng.evaluate.plots import _figure\n"
                     "import tpwng.train.loop as t\nt._batch()\n")
    assert private_uses("tpwng.x", tree) == ["tpwng.x: from tpwng.evaluate.plots import _figure",
                                             "tpwng.x: t._batch"]


def test_the_model_core_imports_nothing_of_the_pipeline():
    """tpwng.model is the paper: it may import torch and itself, never data, features,
    training, evaluation or the command line."""
    found = [f"{name} imports {t}" for name, tree in _modules().items()
             if name.startswith("tpwng.model") for t in imported_modules(tree)
             if t.startswith("tpwng") and not t.startswith("tpwng.model")]
    assert found == []


def test_the_tree_shows_paper_and_pipeline():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert {"model", "data", "features", "train", "evaluate"} <= packages


def test_each_function_name_is_defined_once():
    """One home per idea: no two modules define a top-level function of the same name (the
    snippet grid, for one, lives only in tpwng.grid)."""
    homes: dict[str, list[str]] = {}
    for name, tree in _modules().items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "main":
                homes.setdefault(node.name, []).append(name)
    twice = {f: m for f, m in homes.items() if len(m) > 1}
    assert twice == {}
    assert homes["sample_indices"] == homes["expand_to_frames"] == homes["frame_labels"] \
        == ["tpwng.grid"]


# The layers, lowest first: a module may import its own layer and those below it, never above.
# data sits above features because a manifest is built by probing videos and stores.
LAYERS = (
    ("tpwng", "tpwng.files", "tpwng.device", "tpwng.heap", "tpwng.redact", "tpwng.grid",
     "tpwng.config", "tpwng.loopback", "tpwng.errors"),
    ("tpwng.model",),
    ("tpwng.features",),
    ("tpwng.data",),
    ("tpwng.train",),
    ("tpwng.evaluate",),
    ("tpwng.scoring",),
    ("tpwng.serve",),
    ("tpwng.bench",),
    ("tpwng.cli", "tpwng.__main__"),
)


def layer_of(module: str) -> int:
    """The layer of a tpwng module: its own entry, else its package's."""
    best = None
    for rank, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name != "tpwng":
                if best is None or len(name) > len(best[1]):
                    best = (rank, name)
    if best is not None:
        return best[0]
    if module == "tpwng":
        return 0
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def upward_imports(module: str, tree: ast.Module) -> list[str]:
    """Imports of `module` (at any depth, deferred ones too) that reach a higher layer."""
    own = layer_of(module)
    return [f"{module} imports {t}" for t in imported_modules(tree)
            if t.split(".")[0] == "tpwng" and layer_of(t) > own]


def test_no_import_runs_up_the_layers():
    found = [use for name, tree in _modules().items() for use in upward_imports(name, tree)]
    assert found == []


def test_the_layer_check_finds_upward_imports():
    tree = ast.parse("def f():\n    from tpwng.evaluate.plots import figure\n"
                     "from tpwng.grid import sample_indices\n")
    assert upward_imports("tpwng.features.compare", tree) == [
        "tpwng.features.compare imports tpwng.evaluate.plots"]
    assert upward_imports("tpwng.evaluate.tables", tree) == []


def test_modules_stay_short_and_tcsal_reads_as_the_paper():
    """No module of tpwng over 500 lines; TCSAL (Eq. 7-9) in at most 450, with no hand-written
    autograd (its fast paths live in tpwng.model.attention_kernels)."""
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
    tcsal = (PACKAGE / "model" / "tcsal.py").read_text()
    assert len(tcsal.splitlines()) <= 450
    assert "autograd.Function" not in tcsal
