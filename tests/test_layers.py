"""The tree by stage: data flows one way (model -> plan -> runtime -> session -> gateway ->
checks -> the life cycle -> the front ends), so no module imports one of a later stage,
there is no import cycle, and only the runtime stage knows the runtimes one by one."""
import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).parent.parent / "vpnlab"
STAGES = [["errors", "waits", "model"], ["plan", "lint", "importer"], ["runtime"], ["session"], ["gateway"], ["checks", "change"],
          ["engine"], ["scenario", "console", "cli", "cli_monitoring", "pytest_plugin", "bench", "reference"]]
RUNTIME_MODULES = {"vpnlab.runtime.netns", "vpnlab.runtime.docker", "vpnlab.runtime.containerlab"}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path) -> set[str]:
    """vpnlab modules a file imports (at any level of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vpnlab"):
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vpnlab")}
    return found & set(modules())


def stage(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return next(i for i, names in enumerate(STAGES) if top in names)


def test_no_module_imports_a_later_stage():
    late = [f"{m} (stage {stage(m)}) imports {i} (stage {stage(i)})"
            for m, path in modules().items() if m != "vpnlab" for i in imports(path)
            if i != "vpnlab" and stage(i) > stage(m)]
    assert not late, "\n".join(late)


def test_no_import_cycle():
    found = modules()
    graph = nx.DiGraph((m, i) for m, path in found.items() for i in imports(path)
                       if i != m and found[i].name != "__init__.py")
    assert list(nx.simple_cycles(graph)) == []


def test_only_the_runtime_stage_knows_the_runtimes():
    knowing = [f"{m} imports {i}" for m, path in modules().items() if not m.startswith("vpnlab.runtime")
               for i in imports(path) & RUNTIME_MODULES]
    assert not knowing, "\n".join(knowing)


def test_the_architecture_page_names_every_module():
    """docs/architecture.md matches the tree: every module and stage folder is on it."""
    page = (PACKAGE.parent / "docs/architecture.md").read_text()
    missing = [m for m, path in modules().items() if m != "vpnlab" and path.name != "__init__.py"
               and path.name not in page]
    missing += [f"vpnlab/{d.name}/" for d in PACKAGE.iterdir() if d.is_dir() and d.name != "__pycache__"
                and f"vpnlab/{d.name}/" not in page]
    assert not missing, f"not on docs/architecture.md: {missing}"


def test_every_package_is_in_the_wheel():
    import tomllib
    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set(), "packages missing from pyproject.toml's [tool.setuptools] packages"
