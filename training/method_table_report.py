"""The measured comparison table of the methods as the report shows it, from ``method_table.json``.

A pure function of the dict that ``python -m training.method_table`` writes (every cell is
already a measured, formatted value with its source); used by the report and the Report tab.
"""

from __future__ import annotations

from typing import Any

TABLE_FILE = "method_table.json"
ROWS = ("scope", "data needed", "model updates", "adaptability", "performance", "resources", "cost per reply")
"""The table's rows, in order (the issue's list)."""


def table_markdown(table: dict[str, Any]) -> str:
    meta = table["meta"]
    parts = [
        "## The methods compared, row by row\n"
        f"Every cell is measured (scope excepted), per domain and method, by `python -m training.method_table` on {meta['date']}: "
        f"quality and cost per reply from this report ({meta['split']} split, model alone), adaptability from the fact-drift test, "
        "training figures from the adapters' training logs, serving memory from one fresh process per method."
    ]
    for block in table["domains"].values():
        methods = block["methods"]
        header = ["", *[f"{method} (`{block['variants'][method]}`)" for method in methods]]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in block["rows"]:
            cells = [str(row["values"].get(method, "–")).replace("|", "\\|").replace("\n", "<br>") for method in methods]
            lines.append(f"| **{row['row']}** | " + " | ".join(cells) + " |")
        notes = "".join(f"\n- {note}" for note in block.get("notes", []))
        parts.append(f"### {block['title']}\n" + "\n".join(lines) + notes)
    return "\n\n".join(parts)
