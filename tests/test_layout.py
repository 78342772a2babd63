"""The package's layers, enforced by reading every import (lazy and TYPE_CHECKING ones included).

docs/ARCHITECTURE.md names the folders and the one rule of each; this is that rule as a test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kubectl_grpcprobe"

# What each layer may import from the package. A module may always import from its own layer and
# from the package root's __init__ (the version). Everything else is a violation.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "stop": {"errors"},
    "kubelet": {"errors", "stop"},
    "wire": {"errors", "stop"},
    "kube": {"errors", "stop", "wire", "kubelet"},
    "render": {"errors", "kubelet", "kube"},
    "commands": {"errors", "stop", "kubelet", "wire", "kube", "render", "sandbox"},
    "sandbox.apiserver": {"errors", "kubelet", "wire", "sandbox"},
    "sandbox.node": {"errors", "kubelet", "wire", "sandbox", "sandbox.apiserver"},
    "sandbox": {"errors", "kubelet", "wire", "sandbox.apiserver", "sandbox.node"},
    "cli": {"errors", "stop", "kubelet", "kube", "render", "commands"},
    "__main__": {"cli"},
}
TOP_LEVEL_MODULES = {"__init__", "__main__", "cli", "errors", "stop"}


def layer_of(module: str) -> str:
    """`kubectl_grpcprobe.sandbox.node.kubelet` -> `sandbox.node`; `kubectl_grpcprobe.cli` -> `cli`."""
    parts = module.split(".")[1:]
    if parts[:1] == ["sandbox"] and len(parts) > 1 and parts[1] in ("apiserver", "node"):
        return ".".join(parts[:2])
    return parts[0] if parts else ""


def module_name(path: Path) -> tuple[str, bool]:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every package module `path` imports, resolved to an absolute name, with its line."""
    name, is_package = module_name(path)
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("kubectl_grpcprobe")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            elif (node.module or "").startswith("kubectl_grpcprobe"):
                target = node.module or ""
            else:
                continue
            if node.module is None:  # from . import a, b: each name may be a module
                found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
    return found


def is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").exists() or (PACKAGE.parent / rel / "__init__.py").exists()


def normalise(dotted: str) -> str:
    """`pkg.kubelet.gostr.duration` (a name in a module) -> the module `pkg.kubelet.gostr`."""
    while dotted.count(".") and not is_module(dotted):
        dotted = dotted.rsplit(".", 1)[0]
    return dotted


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    name, _ = module_name(path)
    own = layer_of(name)
    if name == "kubectl_grpcprobe":
        return
    allowed = ALLOWED[own] | {own}
    violations = []
    for line, target in imported_modules(path):
        target = normalise(target)
        if target == "kubectl_grpcprobe":  # the package root: only __version__ lives there
            continue
        layer = layer_of(target)
        if layer not in allowed:
            violations.append(f"{path.relative_to(PACKAGE)}:{line} imports {target} ({own} -> {layer})")
    assert not violations, "imports against the layering of docs/ARCHITECTURE.md:\n" + "\n".join(violations)


def test_nothing_imports_commands_but_cli() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line} imports {target}"
        for path in SOURCES
        if layer_of(module_name(path)[0]) not in ("commands", "cli")
        for line, target in imported_modules(path)
        if layer_of(normalise(target)) == "commands"
    ]
    assert not offenders, offenders


def test_only_the_entry_points_stay_at_the_top_level() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL_MODULES, f"modules at the package's top level: {sorted(top - TOP_LEVEL_MODULES)}"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == {"kubelet", "wire", "kube", "render", "commands", "sandbox"}


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The test above can fail: a lazy `from ..kube.client import KubeClient` inside kubelet/ is caught."""
    fake = PACKAGE / "kubelet" / "_layering_canary.py"
    fake.write_text("def f():\n    from ..kube.client import KubeClient\n    return KubeClient\n")
    try:
        targets = [normalise(t) for _, t in imported_modules(fake)]
        assert targets == ["kubectl_grpcprobe.kube.client"]
        assert layer_of(targets[0]) not in ALLOWED["kubelet"]
    finally:
        fake.unlink()
