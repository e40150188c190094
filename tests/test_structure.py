"""The package's structure rules that a reviewer would otherwise check by hand.

* Every hyper-parameter of a config dataclass (``*Config``) is defined once: no function signature or other class
  in the package repeats the same name with the same literal default (CLI options take ``= SomeConfig.field``),
  and no config dataclass copies another's fields (run configs nest their trainer's config).
* Module docstrings and comments never point outside the repository.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mbirl"
# Names that are not hyper-parameters of one trainer but the ordinary arguments of many functions.
GENERIC = {"seed", "progress", "resume", "source"}


def _is_switched_off(value: object) -> bool:
    """A boolean switch that is off by default (``state_only=False``) names the absence of a feature, not a tuned
    value: components keep such keyword defaults of their own."""
    return value is False


def _literal(node: ast.expr | None) -> object:
    try:
        return ast.literal_eval(node) if node is not None else None
    except ValueError:
        return None  # not a literal (e.g. ``SomeConfig.field``)


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))]


def _config_fields(tree: ast.Module) -> list[tuple[str, str, object]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                    value = _literal(stmt.value)
                    if value is not None and "ClassVar" not in ast.unparse(stmt.annotation):
                        out.append((node.name, stmt.target.id, value))
    return out


def _bindings(tree: ast.Module) -> list[tuple[str, object]]:
    """(name, literal default) of every function parameter and of every class-level annotated assignment outside
    the config dataclasses."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            for arg, default in zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True):
                out.append((arg.arg, _literal(default)))
            for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
                if kw_default is not None:
                    out.append((arg.arg, _literal(kw_default)))
        if isinstance(node, ast.ClassDef) and not node.name.endswith("Config"):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                    out.append((stmt.target.id, _literal(stmt.value)))
    return out


def test_no_signature_repeats_a_config_default():
    """Library functions take the config object (or ``= SomeConfig.field``), never a copy of its default."""
    modules = _modules()
    fields = [f for _, tree in modules for f in _config_fields(tree)]
    assert len(fields) > 50, "expected the package's config dataclasses to be found"
    bound = {(name, repr(value)) for _, tree in modules for name, value in _bindings(tree) if value is not None}
    repeated = sorted(f"{cls}.{name} = {value!r}" for cls, name, value in fields
                      if name not in GENERIC and not _is_switched_off(value) and (name, repr(value)) in bound)
    assert not repeated, "config defaults repeated in a signature or class:\n" + "\n".join(repeated)


def test_no_config_copies_another():
    """A run config nests its trainer's config instead of repeating its fields: no two config dataclasses share
    three or more (name, default) pairs."""
    fields = [f for _, tree in _modules() for f in _config_fields(tree)]
    by_class: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for cls, name, value in fields:
        if name not in GENERIC:
            by_class[cls].add((name, repr(value)))
    names = sorted(by_class)
    copies = [f"{a} / {b}: {sorted(n for n, _ in by_class[a] & by_class[b])}" for i, a in enumerate(names)
              for b in names[i + 1:] if len(by_class[a] & by_class[b]) >= 3]
    assert not copies, "config dataclasses that copy each other's fields:\n" + "\n".join(copies)


@pytest.mark.parametrize("pattern", ["../shared", "DESIGN.md", "shared/fixtures", "seeds/"])
def test_nothing_points_outside_the_repository(pattern):
    root = PACKAGE.parents[1]
    files = [*PACKAGE.rglob("*.py"), *(root / "configs").glob("*"), *(root / "docs").rglob("*.md"),
             root / "README.md", *(root / "benchmarks").glob("*.py")]
    hits = [str(p.relative_to(root)) for p in files if p.is_file() and pattern in p.read_text()]
    assert not hits, f"{pattern!r} found in {hits}"
