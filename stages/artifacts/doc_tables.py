"""The dataset tables of docs/artifacts.md, written from the layout table (stages/artifacts/layouts.py).

    python -m stages.artifacts.doc_tables [docs/artifacts.md]          rewrite the tables in place
    python -m stages.artifacts.doc_tables --check [docs/artifacts.md]  exit 1 if they differ from the layout table

Each table sits between a line `<!-- layout: KIND -->` and a line `<!-- end layout -->`; the text
around them is the doc's own. No stage imports this module.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from stages.artifacts.layouts import LAYOUTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "artifacts.md"
BLOCK = re.compile(r"(<!-- layout: (\w+) -->\n)(.*?)(<!-- end layout -->)", re.S)


def _name(name: str) -> str:
    return f"`{name.format(i=0)}`, `{name.format(i=1)}`, …" if "{i}" in name else f"`{name}`"


def table(kind: str) -> str:
    """A kind's datasets as a markdown table: name, shape (with the dtype where it is not float64), meaning."""
    lines = ["| dataset | shape | meaning |", "|---|---|---|"]
    for name, d in LAYOUTS[kind].items():
        shape = f"[{d.dims}]" if d.dims else "as the parameters"
        if d.dtype != "float64":
            shape += f" {d.dtype}"
        lines.append(f"| {_name(name)} | {shape} | {d.meaning} |")
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """The doc with every table block rewritten from the layout table."""
    return BLOCK.sub(lambda m: m.group(1) + table(m.group(2)) + m.group(4), text)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [Path(a) for a in argv if a != "--check"] or [DOC]
    status = 0
    for path in paths:
        text = path.read_text()
        new = render(text)
        if new != text:
            if check:
                print(f"{path}: its layout tables differ from stages/artifacts/layouts.py "
                      "(run python -m stages.artifacts.doc_tables)")
                status = 1
            else:
                path.write_text(new)
                print(f"rewrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
