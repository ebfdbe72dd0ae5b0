"""The packages import downward only: the library never imports the UI or the tools.

Layers, bottom to top: ``prompts`` and ``bots`` (the bots and their serving), ``training``
(data, training, evaluation), ``webui`` and ``ui`` (the page), ``benchmarks`` (the tools that
drive all of them). A module may import its own layer and those below, including imports
made inside functions. Run: ``python -m pytest tests/test_layers.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN: dict[str, frozenset[str]] = {
    "domains": frozenset({"bots", "prompts", "training", "webui", "ui", "benchmarks"}),
    "prompts": frozenset({"training", "webui", "ui", "benchmarks"}),
    "bots": frozenset({"training", "webui", "ui", "benchmarks"}),
    "training": frozenset({"webui", "ui", "benchmarks"}),
    "webui": frozenset({"ui", "benchmarks"}),
}
EXEMPT: dict[str, frozenset[str]] = {
    # A command, not library code (nothing imports it): it reports with the evaluation's statistics.
    "bots/safety_eval/__main__.py": frozenset({"training"}),
}


def imported_packages(source: str) -> set[str]:
    """The top-level names a module imports, anywhere in its body (relative imports excluded)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_imported_packages_sees_lazy_imports() -> None:
    source = "import os\nfrom bots.registry import VARIANTS\ndef f():\n    import ui\n    from webui import common\n"
    assert imported_packages(source) == {"os", "bots", "ui", "webui"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_its_own(package: str) -> None:
    upward = [
        f"{path.relative_to(REPO)} imports {sorted(found)}"
        for path in sorted((REPO / package).rglob("*.py"))
        if (found := imported_packages(path.read_text(encoding="utf-8")) & FORBIDDEN[package] - EXEMPT.get(path.relative_to(REPO).as_posix(), frozenset()))
    ]
    assert not upward, upward
