"""certok-agent runs on the hosts' own Python: 3.8 and later, standard library only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import certok_agent

PACKAGE = Path(certok_agent.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
# Library calls newer than 3.8 that parse fine under 3.8 but fail when run there.
NEWER_THAN_38 = ("removeprefix", "removesuffix", "functools.cache", "zoneinfo", "tomllib", "dt.UTC")


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_parses_as_python_38(module: Path) -> None:
    ast.parse(module.read_text(), filename=str(module), feature_version=(3, 8))


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_imports_only_the_standard_library_and_itself(module: Path) -> None:
    tree = ast.parse(module.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    foreign = imported - set(sys.stdlib_module_names) - {"certok_agent", "__future__"}
    assert not foreign, f"{module.name} imports {foreign}: the agent must need nothing but Python"


def _has_annotations(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = [*node.args.args, *node.args.kwonlyargs, node.args.vararg, node.args.kwarg]
            if node.returns or any(a is not None and a.annotation for a in arguments):
                return True
    return False


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_annotations_are_never_evaluated(module: Path) -> None:
    # `list[str]` and `X | None` in annotations work on 3.8 only when they are not evaluated.
    text = module.read_text()
    if _has_annotations(ast.parse(text)):
        assert "from __future__ import annotations" in text
    for newer in NEWER_THAN_38:
        assert newer not in text, f"{module.name} uses {newer}, which Python 3.8 lacks"
