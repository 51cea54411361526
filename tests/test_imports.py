"""The package's import structure: every module imports on its own and in any order (no
cycles, no partially initialised modules), the arrows point one way (no module imports one
of a higher layer), and inference does not load the training stack.

The layers are data, below: a module may import modules of its own layer or lower ones. A
module that no entry of `LAYERS` covers fails `test_every_module_has_a_layer`, which says
where to add it.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import pkgutil
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "stroke_seg"
PACKAGE_DIR = REPO / PACKAGE

# Module name (relative to the package) or a dotted prefix of it -> layer; the longest
# matching prefix decides ("data.io" is 1 although "data" is 2).
LAYERS: dict[str, int] = {
    # 0: the error type every layer raises
    "errors": 0,
    # 1: helpers that read or write files and the data contracts, knowing nothing of training
    "atomic": 1,
    "safe_io": 1,
    "outputs": 1,  # output-folder and output-name checks
    "config": 1,  # Hydra resolvers and run folders (omegaconf only)
    "data.checks": 1,
    "data.io": 1,
    "data.preprocessing": 1,
    "shards": 1,  # splitting a prediction run over processes, merging their tables
    # 2: data pipeline, networks, metrics and losses
    "data": 2,
    "models": 2,
    "metrics": 2,
    "stats": 2,
    "losses": 2,
    "postprocess": 2,  # connected-component post-processing, shared by inference and tasks
    # Native-space scans: registration and intensity standardisation, the input checks built
    # on them, and (3) the pipeline that joins them with inference.
    "registration": 2,
    "intensity": 2,
    "quality": 2,
    "template_space": 3,
    # 3: what puts them together: the Lightning module, inference, callbacks, reports
    "lit_module": 3,
    "inference": 3,
    "callbacks": 3,
    "budget": 3,
    "distributed": 3,  # Lightning launch helpers of the training task
    "precision": 3,  # trainer.precision=auto: bf16 where the device runs it natively
    "plotting": 3,
    "report": 3,
    "scoring": 3,  # per-scan rows and result files, shared by evaluate and crossval
    "checkpoints": 3,
    # 4: tasks and entry points
    "train": 4,
    "evaluate": 4,
    "predict": 4,
    "crossval": 4,
    "export": 4,
    "bench": 4,
    "cli": 4,
}
LAYER_NAMES = ("errors", "io-like helpers", "data/models/metrics", "lit/inference", "tasks")


def _walk(directory: Path, prefix: str) -> list[tuple[str, Path]]:
    """(module name, file) of every module under `directory`, packages included, found with
    pkgutil without importing anything."""
    found = []
    for info in pkgutil.iter_modules([str(directory)]):
        name = f"{prefix}.{info.name}"
        if info.ispkg:
            found.append((name, directory / info.name / "__init__.py"))
            found += _walk(directory / info.name, name)
        else:
            found.append((name, directory / f"{info.name}.py"))
    return found


MODULE_FILES = dict([(PACKAGE, PACKAGE_DIR / "__init__.py"), *_walk(PACKAGE_DIR, PACKAGE)])
MODULES = sorted(MODULE_FILES)
# `python -m` entry files run their command when imported; their imports are still checked.
IMPORTABLE = [m for m in MODULES if not m.endswith(".__main__")]


def layer_of(module: str) -> int | None:
    """The layer of a package module; the package itself (an empty __init__) is 0."""
    relative = module.removeprefix(PACKAGE).lstrip(".")
    if not relative:
        return 0
    parts = relative.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return LAYERS[".".join(parts[:end])]
    return None


def imported_modules(module: str) -> set[str]:
    """The package modules `module` imports anywhere in its file (also inside functions and
    ``if TYPE_CHECKING:``: a lazy or typing-only import is still an arrow between modules)."""
    path = MODULE_FILES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:  # `from stroke_seg.data import io` imports a module
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in MODULE_FILES else base)
    return {t for t in targets if t == PACKAGE or t.startswith(f"{PACKAGE}.")}


def _run(code: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Imports each order of modules in a fresh stroke_seg: a child forked from an interpreter
# that has imported only the third-party libraries the package uses (torch, Lightning,
# MONAI, ...), never a stroke_seg module. What is checked is the package's own import
# state, which this leaves exactly as in a new interpreter; it costs a fork per order
# instead of a 10-second torch import. Where fork is missing, each order gets a new
# interpreter.
_IMPORT_ORDERS = r"""
import importlib, json, os, sys, traceback

orders, third_party = json.loads(sys.argv[1]), json.loads(sys.argv[2])

def attempt(order):
    try:
        for name in order:
            importlib.import_module(name)
    except BaseException:
        return traceback.format_exc()
    return ""

if not hasattr(os, "fork"):
    print(json.dumps([attempt(order) for order in orders[:1]]))
    raise SystemExit
for name in third_party:
    try:
        importlib.import_module(name)
    except Exception:
        pass
assert not any(m == "stroke_seg" or m.startswith("stroke_seg.") for m in sys.modules)
results = []
for order in orders:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        with os.fdopen(write, "w") as out:
            out.write(attempt(order))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as out:
        results.append(out.read())
    os.waitpid(pid, 0)
print(json.dumps(results))
"""


def _third_party() -> list[str]:
    """Every non-package module the package imports, to load before forking."""
    names = set()
    for path in MODULE_FILES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    return sorted(n for n in names if n.split(".")[0] not in (PACKAGE, "__future__"))


ORDERS = {
    "sorted": IMPORTABLE,
    "reversed": IMPORTABLE[::-1],
    **{f"shuffle{n}": random.Random(n).sample(IMPORTABLE, len(IMPORTABLE)) for n in range(3)},
}


@functools.cache
def import_results() -> dict[tuple[str, ...], str]:
    """{order: traceback, or "" when it imported}: each module alone first, then every
    order of `ORDERS`, all from one interpreter's third-party imports."""
    orders = [[m] for m in IMPORTABLE] + [list(o) for o in ORDERS.values()]
    return dict(zip(map(tuple, orders), import_in_fresh_interpreters(orders), strict=True))


def import_in_fresh_interpreters(orders: list[list[str]]) -> list[str]:
    """The traceback of each order, "" where it imported."""
    if not hasattr(os, "fork"):
        results = []
        for order in orders:
            done = _run(_IMPORT_ORDERS, json.dumps([order]), "[]")
            assert done.returncode == 0, done.stderr
            results += json.loads(done.stdout)
    else:
        done = _run(_IMPORT_ORDERS, json.dumps(orders), json.dumps(_third_party()))
        assert done.returncode == 0, done.stderr
        results = json.loads(done.stdout)
    assert len(results) == len(orders)
    return results


def _last_line(traceback_text: str) -> str:
    return traceback_text.strip().splitlines()[-1]


def test_the_package_has_the_modules_this_test_expects():
    """The walk finds the package (so the tests below cannot pass on an empty list)."""
    for module in ("stroke_seg.errors", "stroke_seg.data.io", "stroke_seg.data.datamodule"):
        assert module in MODULES
    assert len(IMPORTABLE) >= 25


def test_every_module_imports_first_in_a_fresh_interpreter():
    results = import_results()
    failures = {m: results[(m,)] for m in IMPORTABLE if results[(m,)]}
    assert not failures, "\n".join(f"{m}: {_last_line(v)}" for m, v in failures.items())


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_all_modules_import_in_any_order(order):
    failure = import_results()[tuple(ORDERS[order])]
    assert not failure, failure


def test_every_module_has_a_layer():
    unassigned = [m for m in MODULES if layer_of(m) is None]
    assert not unassigned, (
        f"{', '.join(unassigned)}: in no layer; add the module name (or a prefix) to LAYERS "
        f"in {Path(__file__).relative_to(REPO)} (0 {LAYER_NAMES[0]}, 1 {LAYER_NAMES[1]}, "
        f"2 {LAYER_NAMES[2]}, 3 {LAYER_NAMES[3]}, 4 {LAYER_NAMES[4]})."
    )


def test_no_module_imports_a_module_of_a_higher_layer():
    upward = []
    for module in MODULES:
        own = layer_of(module)
        for target in sorted(imported_modules(module)):
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                upward.append(f"{module} (layer {own}) imports {target} (layer {theirs})")
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_lazy_relative_and_from_package_imports(tmp_path, monkeypatch):
    """The parser finds the imports the layering test must see, so it can fail."""
    source = (
        "import os\n"
        "from stroke_seg.data import io\n"
        "from . import preprocessing\n"
        "def f():\n"
        "    from stroke_seg.inference import Predictor\n"
    )
    fake = tmp_path / "fake.py"
    fake.write_text(source)
    monkeypatch.setitem(MODULE_FILES, "stroke_seg.data.fake", fake)
    assert imported_modules("stroke_seg.data.fake") == {
        "stroke_seg.data.io",
        "stroke_seg.data.preprocessing",
        "stroke_seg.inference",
    }
    assert layer_of("stroke_seg.data.fake") == 2 and layer_of("stroke_seg.inference") == 3
    assert layer_of("stroke_seg.data.io") == 1 and layer_of("stroke_seg.nowhere") is None


INFERENCE_SIDE = ("stroke_seg.data.transforms", "stroke_seg.inference", "stroke_seg.predict")


@functools.cache
def lightning_after_each_import() -> dict[str, list[str]]:
    """{module: the Lightning packages loaded once it is imported}, importing
    `INFERENCE_SIDE` in turn in one new interpreter (nothing else loads Lightning there)."""
    code = (
        "import importlib, json, sys\n"
        "seen = {}\n"
        f"for name in {list(INFERENCE_SIDE)!r}:\n"
        "    importlib.import_module(name)\n"
        "    seen[name] = [m for m in ('pytorch_lightning', 'lightning') if m in sys.modules]\n"
        "print(json.dumps(seen))\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("module", INFERENCE_SIDE)
def test_inference_does_not_load_lightning(module):
    """Prediction scales scans with the training transform (`intensity_transform`) without
    importing the training stack."""
    loaded = lightning_after_each_import()[module]
    assert loaded == [], f"importing {module} loads {', '.join(loaded)}"
