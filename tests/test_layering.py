"""The package's layers: which subpackage may import which, and no import cycles.

The imports are read from the source with ``ast``, those inside functions
included (the package imports its heavy modules lazily, and a lazy import is
still a dependency). Imports under ``if TYPE_CHECKING:`` never run and are
not counted. A package's ``__init__`` is counted only where a module names it
(``from annotate.training.corpora import Corpus``), not for every import of a
module inside it.

The rules, lowest layer first (the README's "Architecture" section shows the same):

==========  =====================================================================
layer       may import, of the package, besides itself
==========  =====================================================================
base        nothing else (errors, labels, resources, schema, features, c_stderr, _version)
audio       annotate.errors, annotate.c_stderr
prepare     base, audio (segments, speech decisions, features: shared by runs and training)
modelling   base, audio
backbone    base, audio, modelling (the pretrained encoder under the heads)
pipeline    base, audio, prepare, modelling, backbone
training    base, audio, prepare, modelling, backbone
views       base, audio, prepare, modelling, backbone, pipeline
cli         base, audio, prepare, modelling, backbone, pipeline, training, views
==========  =====================================================================

and the top: ``annotate`` itself (``annotate.run`` lazily, from
``annotate.pipeline.run``; the version), ``annotate.__main__`` (the CLI),
``annotate.testing`` (base, modelling, backbone). No module of the package
imports ``annotate.testing``.

Libraries kept to one place:

=================  ============================================================
library            imported only by
=================  ============================================================
typer              cli
rich.console       cli (the one console lives in annotate.cli.console)
rich (the rest)    cli, views (report_text draws tables on the console it is given)
tensorflow, keras  modelling, backbone, training (annotate run on LiteRT never loads them)
distributed, dask  annotate.pipeline.cluster
fsspec             annotate.pipeline.store (the one store, local or object storage)
streamlit          annotate.views.app
matplotlib         views, training (evaluate's confusion plot)
=================  ============================================================

Inside ``pipeline``, one driver over two executors and one store:

==========================  ===================================================
module                      may import, of the pipeline
==========================  ===================================================
progress, spill, workers    nothing of the pipeline
emotion_table               nothing of the pipeline
centring, speakers          emotion_table
plan                        speakers
annotator                   plan
store                       centring, speakers (the final table adapts emotions)
local (the local executor)  plan, annotator, progress, spill, store, workers
cluster (the Dask one)      plan, annotator, progress, store
run (the driver)            plan, progress, centring, speakers, store, local, cluster
==========================  ===================================================

The executors never import the driver or each other, and only the driver
opens the store: both executors hand it finished recordings.

That the feature workers of a run and of training never import TensorFlow is
also checked where it happens, in a fresh interpreter (test_litert.py,
test_train.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "annotate"

BASE = {"annotate.errors", "annotate.labels", "annotate.resources", "annotate.schema",
        "annotate.features", "annotate._version", "annotate.c_stderr"}

#: layer: the layers (or modules) of the package it may import, besides its own.
LAYERS: dict[str, set[str]] = {
    "base": set(),
    "audio": {"annotate.errors", "annotate.c_stderr"},
    "prepare": {"base", "audio"},
    "modelling": {"base", "audio"},
    "backbone": {"base", "audio", "modelling"},
    "pipeline": {"base", "audio", "prepare", "modelling", "backbone"},
    "training": {"base", "audio", "prepare", "modelling", "backbone"},
    "views": {"base", "audio", "prepare", "modelling", "backbone", "pipeline"},
    "cli": {"base", "audio", "prepare", "modelling", "backbone", "pipeline", "training", "views"},
    "root": {"annotate._version", "annotate.pipeline.run"},
    "main": {"cli"},
    "testing": {"base", "modelling", "backbone"},
}

#: library: the layers (or modules) that may import it; the longest name that matches wins.
LIBRARIES: dict[str, set[str]] = {
    "typer": {"cli"},
    "rich.console": {"cli"},
    "rich": {"cli", "views"},
    "tensorflow": {"modelling", "backbone", "training"},
    "keras": {"modelling", "backbone", "training"},
    "distributed": {"annotate.pipeline.cluster"},
    "dask": {"annotate.pipeline.cluster"},
    "fsspec": {"annotate.pipeline.store"},
    "streamlit": {"annotate.views.app"},
    "matplotlib": {"views", "training"},
}


#: module of the pipeline: the modules of the pipeline it may import (the table above).
PIPELINE: dict[str, set[str]] = {
    "annotate.pipeline": set(),
    "annotate.pipeline.progress": set(),
    "annotate.pipeline.emotion_table": set(),
    "annotate.pipeline.centring": {"emotion_table"},
    "annotate.pipeline.speakers": {"emotion_table"},
    "annotate.pipeline.spill": set(),
    "annotate.pipeline.workers": set(),
    "annotate.pipeline.plan": {"speakers"},
    "annotate.pipeline.annotator": {"plan"},
    "annotate.pipeline.store": {"centring", "speakers"},
    "annotate.pipeline.local": {"plan", "annotator", "progress", "spill", "store", "workers"},
    "annotate.pipeline.cluster": {"plan", "annotator", "progress", "store"},
    "annotate.pipeline.run": {"plan", "progress", "centring", "speakers", "store", "local",
                              "cluster"},
}


def layer_of(module: str) -> str:
    """The layer a module of the package belongs to."""
    if module == "annotate":
        return "root"
    if module in BASE:
        return "base"
    special = {"annotate.__main__": "main", "annotate.testing": "testing"}
    if module in special:
        return special[module]
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return parts[1]
    raise AssertionError(f"{module} is in no layer: add it to a subpackage or to the rules "
                         "in tests/test_layering.py")


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(module: str, path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """What a module imports, at any depth: (dotted name, line).

    A name of the package is resolved to the module it names (``from
    annotate.audio import decode`` -> ``annotate.audio.decode``; ``from
    annotate.audio.decode import probe`` -> ``annotate.audio.decode``). A
    library's ``from X import Y`` gives both ``X`` and ``X.Y``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((_in_package(alias.name, modules), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:
                    found.append((full, node.lineno))
                elif base.split(".")[0] == "annotate":
                    found.append((_in_package(base, modules), node.lineno))
                else:
                    found.append((base, node.lineno))
                    found.append((full, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _in_package(name: str, modules: set[str]) -> str:
    """The longest module of the package that ``name`` starts with; else ``name``."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return name


def import_graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the package's modules it imports, and every import of a library: lines."""
    names = module_names(package)
    modules = set(names)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    libraries: list[tuple[str, str, int]] = []
    for module, path in names.items():
        for name, line in imported_names(module, path, modules):
            if name in modules:
                if name != module:
                    graph[module].add(name)
            elif name.split(".")[0] == "annotate":
                raise AssertionError(f"{module}:{line} imports {name}, which does not exist")
            else:
                libraries.append((module, name, line))
    return graph, libraries


def allowed(module: str, entries: set[str]) -> bool:
    """Whether a module is one of ``entries``: a layer's name or a module (or its package)."""
    layer = layer_of(module)
    return any(entry == layer or module == entry or module.startswith(entry + ".")
               for entry in entries)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module in sorted(graph):
        layer = layer_of(module)
        for target in sorted(graph[module]):
            if layer_of(target) == layer and layer not in ("root", "main", "testing"):
                continue
            if not allowed(target, LAYERS[layer]):
                problems.append(f"{module} ({layer}) imports {target} ({layer_of(target)})")
    return problems


def library_violations(libraries) -> list[str]:
    problems = []
    for module, name, line in libraries:
        rules = [lib for lib in LIBRARIES if name == lib or name.startswith(lib + ".")]
        if not rules:
            continue
        rule = max(rules, key=len)
        if not allowed(module, LIBRARIES[rule]):
            problems.append(f"{module}:{line} imports {name} ({rule}: only "
                            f"{', '.join(sorted(LIBRARIES[rule]))})")
    return sorted(set(problems))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_every_module_is_in_a_layer():
    for module in module_names():
        assert layer_of(module) in LAYERS


def test_each_layer_imports_only_the_layers_below_it():
    graph, _ = import_graph()
    assert layer_violations(graph) == []


def test_typer_rich_tensorflow_dask_streamlit_stay_where_they_belong():
    _, libraries = import_graph()
    assert library_violations(libraries) == []


def test_no_import_cycles_between_modules():
    graph, _ = import_graph()
    assert cycles(graph) == [], "import cycles (each list is one strongly connected set)"


def test_the_pipeline_is_one_driver_over_two_executors_and_one_store():
    graph, _ = import_graph()
    pipeline = {m for m in graph if m == "annotate.pipeline" or m.startswith("annotate.pipeline.")}
    assert pipeline == set(PIPELINE), "a module of the pipeline is missing from PIPELINE, or gone"
    problems = [f"{module} imports {target}" for module in sorted(pipeline)
                for target in sorted(graph[module] & pipeline)
                if target.removeprefix("annotate.pipeline.") not in PIPELINE[module]]
    assert problems == []


def test_the_checks_catch_a_violation(tmp_path):
    # A copy of a small package that breaks each rule once: the checks must say so.
    package = tmp_path / "annotate"
    for folder in ("audio", "pipeline", "cli"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("")
    (package / "audio" / "decode.py").write_text(
        "def f():\n    from annotate.pipeline import local\n")
    (package / "pipeline" / "local.py").write_text(
        "from annotate.audio.decode import f\nimport typer\n")
    (package / "cli" / "views.py").write_text("from rich.console import Console\n")
    graph, libraries = import_graph(package)
    assert layer_violations(graph) == [
        "annotate.audio.decode (audio) imports annotate.pipeline.local (pipeline)"]
    assert library_violations(libraries) == [
        "annotate.pipeline.local:2 imports typer (typer: only cli)"]
    assert cycles(graph) == [["annotate.audio.decode", "annotate.pipeline.local"]]

