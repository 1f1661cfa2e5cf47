"""The layer rule of the design (docs: /work/shared/DESIGN.md, "Layers"), enforced by reading
every module's imports, the lazy ones inside functions included.

A module may import modules of its own layer or of layers below it, never above; the front ends
(cli, tui, server) never import each other, except that the CLI starts the TUI and the server
lazily. A new module must be given a layer here: that is the moment to decide where it belongs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "localllm"

# Lower numbers sit lower. A name covers the module and, for a package, everything inside it.
LAYERS: dict[str, int] = {
    # where files live, the error hierarchy, durable writes
    "localllm.paths": 0,
    "localllm.errors": 0,
    "localllm.durable": 0,
    # pure logic: no llama_cpp / typer / textual / network
    "localllm.textin": 1,
    "localllm.ggufvalues": 1,
    "localllm.profiles": 1,
    "localllm.templates": 1,
    "localllm.reasoning": 1,
    "localllm.catalog": 1,
    "localllm.modelfile": 1,
    "localllm.gguf": 1,
    "localllm.fit": 1,
    "localllm.refs": 1,
    "localllm.offload": 1,
    "localllm.images": 1,  # image headers, data URLs, WebP to PNG (decoding is llama.cpp's)
    "localllm.structured": 1,  # JSON schema and GBNF checks (conversion is the session's)
    "localllm.tools": 1,  # tool calls: parsing and forcing grammars
    # files on disk and the network
    "localllm.store": 2,
    "localllm.hub": 2,
    "localllm.conversations": 2,
    "localllm.starter": 2,
    "localllm.foreign": 2,  # other tools' model stores, read in place
    "localllm.rpcwire": 2,  # probing llama.cpp RPC workers over their own protocol (sockets)
    "localllm.rpcbuild": 2,  # building llama.cpp with RPC from the vendored sources (cmake)
    "localllm.rpcworker": 2,  # running the worker binary; the --mem relay (sockets)
    "localllm.hardware": 2,  # cores and CPU load from sysfs and /proc (no llama_cpp)
    # the only modules that load llama_cpp; one turn of a conversation
    "localllm.backend": 3,  # loading llama.cpp's library; its backends, devices, log
    "localllm.engine": 3,
    "localllm.sampling": 3,  # the sampler chain and grammars (llama.cpp via the engine)
    "localllm.preload": 3,  # a run's model loaded while its command line is read
    "localllm.promptcache": 3,  # saved KV states of earlier prompts (through the engine)
    "localllm.speculative": 3,  # drafters for speculative decoding (n-grams, a draft model)
    "localllm.session": 3,
    "localllm.loading": 3,
    "localllm.enginechild": 3,  # an engine in a child process (llama.cpp aborts stay there)
    "localllm.bench": 3,
    "localllm.streaming": 3,  # one turn batched for a screen (no UI)
    "localllm.embeddings": 3,  # texts to vectors (loads llama_cpp, like the engine)
    "localllm.vision": 3,  # the projector (mtmd) beside an engine
    # registering RPC workers: ctypes on the libggml the bindings loaded, so engine level
    "localllm.rpc": 3,
    # the front ends
    "localllm.cli": 4,
    "localllm.tui": 4,
    "localllm.server": 4,
    "localllm.__main__": 4,
}
FRONT_ENDS = ("localllm.cli", "localllm.tui", "localllm.server")
# (importer, imported) pairs between front ends that the design allows: lazily, inside a function.
LAZY_FRONT_END_IMPORTS = {("localllm.cli", "localllm.tui"), ("localllm.cli", "localllm.server")}
# Only these layers may import the heavy engine library.
HEAVY = {"llama_cpp": 3}
# Who may import each heavy or front-end library at all (DESIGN: "the only modules that ...").
OWNERS = {
    "llama_cpp": (
        "localllm.backend",  # loads the bindings; libggml's device API through ctypes
        "localllm.engine",
        "localllm.session",
        "localllm.embeddings",
        "localllm.vision",
    ),
    "huggingface_hub": ("localllm.hub",),
    "textual": ("localllm.tui",),
    "typer": ("localllm.cli",),
    "rich": ("localllm.cli", "localllm.tui"),
    "starlette": ("localllm.server",),
    "uvicorn": ("localllm.server",),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _group(name: str) -> str | None:
    """The LAYERS key that covers ``name`` (longest match), or None."""
    best = None
    for key in LAYERS:
        if (name == key or name.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best


def _front_end(name: str) -> str | None:
    return next((f for f in FRONT_ENDS if name == f or name.startswith(f + ".")), None)


def _imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from localllm import store`` imports the module localllm.store
            names = [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
        else:
            continue
        for name in names:
            found.append((name, node.lineno, id(node) in top_level))
    return found


def _all_modules() -> list[tuple[Path, str]]:
    return [(p, _module_name(p)) for p in sorted(PACKAGE.rglob("*.py"))]


def test_every_module_has_a_layer() -> None:
    missing = [name for _, name in _all_modules() if name != "localllm" and _group(name) is None]
    assert not missing, f"give these modules a layer in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("path,module", _all_modules(), ids=lambda v: getattr(v, "name", v))
def test_imports_point_down(path: Path, module: str) -> None:
    if module == "localllm":
        return
    group = _group(module)
    assert group is not None
    layer = LAYERS[group]
    wrong = []
    for name, line, top in _imports(path, module):
        root = name.split(".")[0]
        if root in HEAVY and layer < HEAVY[root]:
            wrong.append(f"line {line}: {name} (only layer {HEAVY[root]}+ may import it)")
        if root != "localllm" or name == "localllm":
            continue
        target = _group(name)
        if target is None:
            continue  # ``from localllm import x`` also lists "localllm.x" and the package
        mine, theirs = _front_end(module), _front_end(name)
        if mine and theirs and mine != theirs:
            if (mine, theirs) not in LAZY_FRONT_END_IMPORTS or top:
                wrong.append(f"line {line}: {name} (front ends never import each other)")
            continue
        if LAYERS[target] > layer:
            wrong.append(f"line {line}: {name} (layer {LAYERS[target]} above {layer})")
    assert not wrong, f"{module} (layer {layer}) imports upward:\n" + "\n".join(wrong)


@pytest.mark.parametrize("path,module", _all_modules(), ids=lambda v: getattr(v, "name", v))
def test_heavy_libraries_stay_with_their_owners(path: Path, module: str) -> None:
    wrong = []
    for name, line, _ in _imports(path, module):
        owners = OWNERS.get(name.split(".")[0])
        if owners and not any(module == o or module.startswith(o + ".") for o in owners):
            wrong.append(f"line {line}: {name} (only {', '.join(owners)} may import it)")
    assert not wrong, f"{module}:\n" + "\n".join(wrong)


def test_the_checker_sees_lazy_upward_imports(tmp_path: Path) -> None:
    """The rule can fail: a pure module importing the store inside a function is caught."""
    fake = tmp_path / "profiles.py"
    fake.write_text("def save():\n    from localllm.store import write_atomic\n")
    found = _imports(fake, "localllm.profiles")
    assert ("localllm.store.write_atomic", 2, False) in found
    assert LAYERS[_group("localllm.store.write_atomic")] > LAYERS["localllm.profiles"]
    rel = tmp_path / "pkg" / "cli" / "x.py"
    rel.parent.mkdir(parents=True)
    rel.write_text("from ..tui import app\n")
    assert ("localllm.tui.app", 1, True) in _imports(rel, "localllm.cli.x")
