"""The layout holds: every class path users read resolves, each package imports only what
CONTRIBUTING.md's table allows, and no test module imports another.

A stale path (a class moved, a module renamed) in a config, the README or the docs fails here rather
than in a user's first run.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOTTED = re.compile(r"(?<![\w./])(?:stare_lit|callbacks)(?:\.[A-Za-z_]\w*)+(?!\w)(?<!\.md)")  # not the page callbacks.md
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
    "blame": {"errors", "rewards", "schemes"},  # a top-level module, like module: isinstance checks
    "ops": {"errors"},
    "schemes": {"ops", "errors"},
    "rollout": {"errors"},
    "sandbox": {"errors"},  # and the standard library only (test_the_sandbox_loads_no_torch)
    "rewards": {"errors", "sandbox"},
    "data": {"rewards", "errors"},
    "experience": {"rollout", "rewards", "data", "errors"},
    "train": {"ops", "schemes", "rollout", "rewards", "errors"},
    "module": {"ops", "schemes", "rollout", "sandbox", "rewards", "data", "experience", "train", "errors", "blame"},
    "commands": {"ops", "schemes", "rollout", "sandbox", "rewards", "data", "experience", "train", "errors", "blame",
                 "module"},
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
    moved = {"sandbox.py", "_sandbox_child.py", "_wire.py", "judge.py"}  # now stare_lit/sandbox/, no alias left
    assert not moved & {p.name for p in (ROOT / "stare_lit" / "rewards").glob("*.py")}


def test_the_sandbox_loads_no_torch():
    """A process that runs programs and judges their tests (stare_lit.sandbox) needs the standard library only."""
    code = ("import sys, stare_lit.sandbox; stare_lit.sandbox.compile_test('assert f(2) == 4');"
            " print(sorted({'torch', 'numpy', 'lightning', 'math_verify'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]"]


# ------------------------------------------------------------------------------ links in the docs
LINKED = [*DOCS, ROOT / "benchmarks" / "README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)  # fenced code blocks
CODE = re.compile(r"`[^`\n]*`")  # inline code spans


def prose(text: str) -> str:
    """``text`` without its code, which may hold brackets that are not links (and ``#`` lines that are not headings)."""
    return CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text lowercased, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()  # a link in a heading keeps its text
    return "".join("-" if c == " " else c for c in text if c.isalnum() or c in " -_")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    times: dict[str, int] = {}
    for line in FENCE.sub("", path.read_text()).splitlines():
        heading = re.match(r"#{1,6} +(.*?)(?: +#+)? *$", line)
        if heading:
            base = slug(heading.group(1))
            found.add(f"{base}-{times[base]}" if base in times else base)
            times[base] = times.get(base, 0) + 1
    return found


def test_slug_follows_github():
    assert slug("STARE by the position's own entropy (stare-lit's extension)") == \
        "stare-by-the-positions-own-entropy-stare-lits-extension"
    assert slug("Pick a scheme — one YAML line") == "pick-a-scheme--one-yaml-line"
    assert slug("What the second round found (2026-12-03, 2 CPU cores, this tree)") == \
        "what-the-second-round-found-2026-12-03-2-cpu-cores-this-tree"
    assert slug("How to add …") == "how-to-add-" and slug("`stare-lit fit`: the_step") == "stare-lit-fit-the_step"


@pytest.mark.parametrize("doc", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_in_the_docs_exists(doc: Path):
    broken = []
    for target in LINK.findall(prose(doc.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not a file of this repository
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no heading '#{anchor}' in {path.relative_to(ROOT)})")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_is_a_front_door_that_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300, "the README is the front door; move the detail into docs/"
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(prose(readme))}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md links no docs page of: {missing}"




def test_no_test_module_imports_another():
    """Code two test files share lives in conftest.py or a helper module (helpers.py, live.py, cli.py,
    callbacks/scripted.py), never in a test_*.py that another one imports."""
    broken = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module or ''}.{a.name}" for a in node.names]
            else:
                continue
            if any(part.startswith("test_") for name in names for part in name.split(".")):
                broken.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {', '.join(names)}")
    assert not broken, "\n".join(broken)


def test_every_test_file_the_docs_name_exists():
    """A moved test file leaves no stale ``tests/...py`` behind in the docs, benchmarks' notes or comments."""
    named = re.compile(r"tests/[\w/]+\.py")
    texts = [*LINKED, *sorted((ROOT / "stare_lit").rglob("*.py")), *sorted((ROOT / "configs").rglob("*.yaml"))]
    stale = sorted({f"{p.relative_to(ROOT)}: {m}" for p in texts for m in named.findall(p.read_text())
                    if not (ROOT / m).exists()})
    assert not stale, "\n".join(stale)
