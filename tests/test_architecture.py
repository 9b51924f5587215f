"""The package's shape, checked: imports run one way (capture -> quantities ->
write -> event files -> read -> diagnosis / plugin), without cycles, and the
plugin that TensorBoard loads pulls in no framework. Read with ``ast`` from
the sources: nothing is imported to check it."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "tb_bnstats"

# The framework folders (tb_bnstats/frameworks/<name>/): each is a component "frameworks.<name>".
FOLDERS = ("keras", "torch", "tf1", "flax")
# The folders of training loops over one framework's models (Lightning, the Hugging Face Trainer): adapters
# over that framework's folder, not in the registry (their models are that framework's).
LOOP_FOLDERS = {"lightning": "torch", "transformers": "torch"}
# What an adapter builds on: the neutral core and the registry.
CORE = {"format", "quantities", "write", "capture", "measure", "diagnosis", "options", "recorder", "loop",
        "frameworks"}
# component -> the components it may import (itself always allowed).
ALLOWED = {
    "format": set(),
    "quantities": set(),
    "write": {"format", "quantities"},
    "read": {"format"},
    "capture": {"format", "quantities"},
    "measure": {"format", "quantities", "capture", "frameworks"},
    "diagnosis": {"format", "quantities", "read", "measure", "frameworks"},
    # The options, defined once; the recorder; the base of the step-loop adapters.
    "options": {"format", "write", "measure"},
    "recorder": {"format", "quantities", "write", "measure", "diagnosis", "capture", "options"},
    "loop": {"options", "recorder", "diagnosis"},
    "plugin": {"format", "quantities", "read", "diagnosis"},
    "cli": {"read", "diagnosis", "format"},
    "__init__": set(),
    # The registry imports its folders by name, when asked (importlib), never at import.
    "frameworks": set(),
    # TensorFlow helpers shared by the two TensorFlow-based folders; the ring in torch tensors by the two
    # torch-based ones.
    "frameworks.tensorflow_ops": set(),
    "frameworks.torch_ops": {"capture"},
    "frameworks.jax_ops": set(),  # the ring's Ops in jax.numpy (the Flax capture)
    "frameworks.flax": CORE | {"frameworks.jax_ops"},
    "frameworks.keras": CORE | {"frameworks.tensorflow_ops", "frameworks.torch_ops"},
    "frameworks.tf1": CORE | {"frameworks.tensorflow_ops"},
    "frameworks.torch": CORE | {"frameworks.torch_ops"},
    **{f"frameworks.{loop}": CORE | {f"frameworks.{over}"} for loop, over in LOOP_FOLDERS.items()},
    # The public names of the adapters: tb_bnstats.torch, tb_bnstats.compat.v1.
    "torch": {"frameworks.torch"},
    "compat": {"frameworks.tf1"},
    "flax": {"frameworks.flax"},
    # tb_bnstats.lightning, tb_bnstats.transformers.
    **{loop: {f"frameworks.{loop}"} for loop in LOOP_FOLDERS},
}
# Imports that only some modules of a component may make.
ONLY_FROM = {
    ("diagnosis", "measure"): {"tb_bnstats.diagnosis.live"},  # the live-model checks
    ("diagnosis", "read"): {"tb_bnstats.diagnosis"},  # diagnose(logdir), inside the function
    ("diagnosis", "frameworks"): {"tb_bnstats.diagnosis.words"},  # the words of a layer's framework
    ("measure", "frameworks"): {"tb_bnstats.measure.passes"},  # the passes of a model's framework
}
FRAMEWORKS = ("tensorflow", "keras", "torch", "jax")


def _modules():
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path, module_level_only=False):
    """``[(imported module, line)]`` of a source file: ``import a.b`` gives
    ``a.b``; ``from a import b`` gives ``a.b`` when that is a module of the
    package, else ``a``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.append((full if full in MODULES else node.module, node.lineno))
    return out


def _component(module):
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    if parts[1] == "frameworks" and len(parts) > 2:
        return f"frameworks.{parts[2]}"
    return parts[1]


def test_every_module_belongs_to_a_known_component():
    assert {_component(m) for m in MODULES} <= set(ALLOWED), "a new top-level part needs a rule here"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_flow(module):
    mine = _component(module)
    for imported, line in _imports(MODULES[module]):
        if not imported.startswith("tb_bnstats."):
            continue
        theirs = _component(imported)
        if theirs == mine:
            continue
        assert theirs in ALLOWED[mine], f"{module}:{line} imports {imported}: {mine} must not import {theirs}"
        only = ONLY_FROM.get((mine, theirs))
        assert only is None or module in only, f"{module}:{line} imports {imported}: only {only} may"


def test_no_import_cycle():
    graph = {m: {i for i, _ in _imports(p, module_level_only=True) if i in MODULES and i != m}
             for m, p in MODULES.items()}
    # A module imports its package's __init__ first; that is not a cycle of ours.
    for m in graph:
        graph[m] = {i for i in graph[m] if not m.startswith(i + ".")}
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def _closure(start):
    """Every module reached from ``start`` through module-level imports
    (third-party names included, as given)."""
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if m in MODULES:
            todo += [i for i, _ in _imports(MODULES[m], module_level_only=True)]
            parent = m.rsplit(".", 1)[0]
            if parent != m and parent in MODULES:  # importing a.b runs a/__init__ first
                todo.append(parent)
    return seen


@pytest.mark.parametrize("entry", ["tb_bnstats.plugin.loader", "tb_bnstats.plugin.plugin", "tb_bnstats.cli",
                                   "tb_bnstats.diagnosis", "tb_bnstats.read.reader", "tb_bnstats.format.records",
                                   "tb_bnstats.quantities"])
def test_readers_of_logs_import_no_framework(entry):
    reached = _closure(entry)
    frameworks = sorted(m for m in reached if m.split(".")[0] in FRAMEWORKS)
    assert frameworks == [], f"{entry} imports {frameworks} at module level"
    ours = {_component(m) for m in reached if m.startswith("tb_bnstats.")}
    if entry.startswith("tb_bnstats.plugin"):
        assert not ours & {"capture", "measure", "write", "recorder",
                           *(f"frameworks.{f}" for f in (*FOLDERS, *LOOP_FOLDERS))}, ours


@pytest.mark.parametrize("entry", ["tb_bnstats.torch", "tb_bnstats.frameworks.torch.capture.hooks",
                                   "tb_bnstats.frameworks.torch.passes", "tb_bnstats.measure.population",
                                   "tb_bnstats.measure.gap", "tb_bnstats.diagnosis.live", "tb_bnstats.recorder",
                                   "tb_bnstats.lightning", "tb_bnstats.transformers"])
def test_the_pytorch_side_imports_no_other_framework(entry):
    """A PyTorch process must not need TensorFlow, Keras or JAX (the run-time
    check is tests/pytorch/test_torch_capture.py)."""
    reached = _closure(entry)
    others = sorted(m for m in reached if m.split(".")[0] in ("tensorflow", "keras", "jax"))
    assert others == [], f"{entry} imports {others} at module level"


@pytest.mark.parametrize("entry", ["tb_bnstats.flax", "tb_bnstats.frameworks.flax.capture"])
def test_the_flax_side_imports_no_other_framework(entry):
    """A Flax process must not need TensorFlow, Keras or PyTorch (the run-time
    check is tests/flax/test_flax_capture.py)."""
    reached = _closure(entry)
    others = sorted(m for m in reached if m.split(".")[0] in ("tensorflow", "keras", "torch"))
    assert others == [], f"{entry} imports {others} at module level"


def test_format_and_quantities_import_nothing_of_the_package():
    for module, path in MODULES.items():
        if _component(module) in ("format", "quantities"):
            others = [i for i, _ in _imports(path) if i.startswith("tb_bnstats.")
                      and _component(i) != _component(module)]
            assert others == [], f"{module} imports {others}"


def test_no_file_outside_the_repository_is_cited():
    root = PACKAGE.parent
    for path in [*PACKAGE.rglob("*.py"), root / "README.md", *root.glob("docs/*.md")]:
        assert "DESIGN.md" not in path.read_text(encoding="utf-8"), f"{path} cites DESIGN.md"


def test_the_core_imports_no_framework_folder_and_no_folder_another():
    """The core reaches a framework only through the registry
    (tb_bnstats.frameworks), and a folder never imports another folder, but
    a loop's folder the folder of the framework it trains."""
    folders = {f"frameworks.{f}" for f in (*FOLDERS, *LOOP_FOLDERS)}
    loops = {f"frameworks.{loop}": f"frameworks.{over}" for loop, over in LOOP_FOLDERS.items()}
    for module, path in MODULES.items():
        mine = _component(module)
        for imported, line in _imports(path):
            theirs = _component(imported) if imported.startswith("tb_bnstats.") else None
            if theirs in folders and theirs != mine and loops.get(mine) != theirs:
                assert mine in ("torch", "compat", "flax", *LOOP_FOLDERS), \
                    f"{module}:{line} imports the folder {theirs}"


def test_every_folder_is_registered_and_declares_what_the_core_asks():
    """Each folder is in the registry, its FRAMEWORK names a words module
    with words for each of its layer frameworks, and its passes module (read
    from the source: importing it imports the framework) defines every
    member of tb_bnstats.measure.passes.Passes."""
    import inspect

    from tb_bnstats import frameworks
    from tb_bnstats.diagnosis.words import Words
    from tb_bnstats.measure.passes import Passes

    assert frameworks.REGISTRY == tuple(f"tb_bnstats.frameworks.{f}" for f in ("keras", "torch", "tf1", "flax"))
    assert sorted(p.name for p in (PACKAGE / "frameworks").iterdir() if p.is_dir() and p.name != "__pycache__") \
        == sorted((*FOLDERS, *LOOP_FOLDERS))
    members = {name for name, _ in inspect.getmembers(Passes) if not name.startswith("_")} | {"GapProbe"}
    for framework in frameworks.registered():
        words = frameworks._words()
        assert all(isinstance(words[lf], Words) for lf in framework.layer_frameworks), framework.name
        if framework.passes is not None:
            tree = ast.parse(MODULES[framework.passes].read_text(encoding="utf-8"))
            defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            assert members <= defined, (framework.passes, members - defined)


def test_logs_without_a_framework_are_read_as_keras():
    """Logs written before LayerInfo.framework existed came from Keras 3: the
    format's default is the Keras folder's name for its layers."""
    from tb_bnstats.format import metadata
    from tb_bnstats.frameworks.keras import KERAS

    assert metadata.DEFAULT_FRAMEWORK == KERAS == metadata.LayerInfo("bn", 1, 0.9, 1e-3).framework
