"""The report's optional sections, each from a file that its own command writes beside results.json.

``extra_sections(out_dir)`` returns the markdown of every such file that is there (the measured
methods table of ``python -m training.method_table``, the data-efficiency curve of
``python -m training.data_curve``); ``rerender_report(out_dir)`` rewrites ``report.md`` from
``results.json`` with them, so each command can refresh the report without re-running the others.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.curve_report import CURVE_FILE, curve_markdown
from training.method_table_report import TABLE_FILE, table_markdown
from training.prompt_design_report import DESIGN_FILE, design_markdown

SECTIONS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    (TABLE_FILE, table_markdown),
    (CURVE_FILE, curve_markdown),
    (DESIGN_FILE, design_markdown),
)
"""File name and renderer, in report order."""


def load_section_data(out_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def extra_sections(out_dir: Path) -> list[str]:
    sections = []
    for name, render in SECTIONS:
        data = load_section_data(out_dir, name)
        if data is not None:
            sections.append(render(data))
    return sections


def rerender_report(out_dir: Path) -> Path | None:
    """report.md again from results.json, its plots and every extra section; None without results."""
    from training.eval_plots import write_plots
    from training.eval_report import write_report

    results = load_section_data(out_dir, "results.json")
    if results is None:
        return None
    return write_report(results, out_dir / "report.md", write_plots(results, out_dir), extra_sections(out_dir))
