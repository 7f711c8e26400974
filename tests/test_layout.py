"""The layout holds: every class path users read resolves, and each package imports only what
CONTRIBUTING.md's table allows.

A stale path (a class moved, a module renamed) in a config, the README or the docs fails here rather
than in a user's first run.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOTTED = re.compile(r"(?<![\w./])(?:stare_lit|callbacks)(?:\.[A-Za-z_]\w*)+")
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def resolve(path: str):
    """Import the longest module prefix of ``path``, then walk the rest as attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)  # AttributeError: the name is stale
        return obj
    raise ModuleNotFoundError(path)


def class_paths(node) -> list[str]:
    """Every ``class_path`` value in a parsed YAML document."""
    if isinstance(node, dict):
        found = [node["class_path"]] if isinstance(node.get("class_path"), str) else []
        return found + [p for v in node.values() for p in class_paths(v)]
    if isinstance(node, list):
        return [p for v in node for p in class_paths(v)]
    return []


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_class_path_in_configs_resolves(config: Path):
    paths = class_paths(yaml.safe_load(config.read_text()))
    paths += DOTTED.findall(config.read_text())  # also the ones in comments
    for path in paths:
        if path.startswith(("stare_lit", "callbacks", "lightning", "torch")):
            assert resolve(path) is not None, f"{config.name}: {path}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_stare_lit_name_in_the_docs_resolves(doc: Path):
    names = sorted(set(DOTTED.findall(doc.read_text())))
    stale = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError):
            stale.append(name)
    assert not stale, f"{doc.name} names paths that do not exist: {stale}"


def test_the_main_scheme_names_resolve_to_the_classes_users_expect():
    from stare_lit.schemes.stare import STARE

    assert resolve("stare_lit.schemes.STARE") is STARE
    assert resolve("stare_lit.rollout.FastRollout").__module__ == "stare_lit.rollout.fast"
    assert resolve("stare_lit.rewards.CodeTestReward").__module__ == "stare_lit.rewards.code"
    with pytest.raises(AttributeError, match="weighting"):
        resolve("stare_lit.weighting.STARE")  # the old flat layout is gone, no alias left behind


# package -> the stare_lit packages it may import (CONTRIBUTING.md, "Who may import whom")
ALLOWED = {
    "errors": set(),
    "blame": {"errors", "rewards", "schemes"},  # isinstance checks, imported lazily
    "ops": {"errors"},
    "schemes": {"ops", "errors"},
    "rollout": {"errors"},
    "rewards": {"errors", "blame"},
    "data": {"rewards", "errors"},
    "experience": {"rollout", "rewards", "data", "errors"},
    "train": {"ops", "schemes", "rollout", "rewards", "errors"},
    "module": {"ops", "schemes", "rollout", "rewards", "data", "experience", "train", "errors", "blame"},
    "commands": {"ops", "schemes", "rollout", "rewards", "data", "experience", "train", "errors", "blame", "module"},
}


def part_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "stare_lit" and len(parts) > 1 else None


def imports_of(path: Path) -> list[str]:
    """Every module name ``path`` imports, at any depth (lazy imports count)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "stare_lit":
                names += [f"stare_lit.{a.name}" for a in node.names]
    return names


def test_each_package_imports_only_what_the_table_allows():
    broken = []
    for path in sorted((ROOT / "stare_lit").rglob("*.py")):
        rel = path.relative_to(ROOT / "stare_lit")
        part = rel.parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        for name in imports_of(path):
            other = part_of(name)
            if other is None or other == part:
                continue
            if other not in ALLOWED[part]:
                broken.append(f"stare_lit/{rel} imports {name}")
    assert not broken, "\n".join(broken)


def test_callbacks_never_import_the_commands_and_stare_lit_never_imports_callbacks():
    for path in sorted((ROOT / "callbacks").glob("*.py")):
        assert not [n for n in imports_of(path) if part_of(n) == "commands"], path.name
    for path in sorted((ROOT / "stare_lit").rglob("*.py")):
        assert not [n for n in imports_of(path) if n.split(".")[0] == "callbacks"], path.name


def test_the_flat_modules_are_gone():
    flat = sorted(p.name for p in (ROOT / "stare_lit").glob("*.py"))
    assert flat == ["__init__.py", "blame.py", "errors.py", "experience.py", "module.py"]
