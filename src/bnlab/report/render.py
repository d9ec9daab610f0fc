"""The report document and its two renderings: self-contained HTML and a Markdown summary.

A :class:`Document` is a title, intro blocks and sections of blocks (paragraphs, tables,
figures). HTML embeds figures as base64 PNG so the file opens from disk with nothing
beside it; Markdown links the PNG copies written next to it. Both are deterministic.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from bnlab.report.spec import Block, Figure, Paragraph, Table

__all__ = [
    "VERDICT_TEXT",
    "Document",
    "Section",
    "render_html",
    "render_markdown",
    "render_text_table",
    "slug",
    "verdict_class",
]

#: How a claim's verdict is written in the tables (and coloured in HTML).
VERDICT_TEXT = {True: "holds", False: "does not hold", None: "not measured"}

#: Colour classes of a "verdict" column's cells, by how the text starts (first match).
_VERDICT_CLASS = (
    ("holds", "ok"),
    ("bnlab better", "ok"),
    ("does not hold", "bad"),
    ("bnlab worse", "bad"),
    ("bnlab differs", "bad"),
    ("not measured", "na"),
    ("undecided", "na"),
)


def verdict_class(text: str) -> str | None:
    """The HTML class of a verdict cell (``"ok"``, ``"bad"``, ``"na"``), or ``None``.

    >>> verdict_class("holds: consistent with the original"), verdict_class("bnlab worse ...")
    ('ok', 'bad')
    """
    return next((css for start, css in _VERDICT_CLASS if text.startswith(start)), None)


def slug(text: str) -> str:
    """An anchor / file-name stem: ``"Deep CNN (seed 000)"`` -> ``"deep-cnn-seed-000"``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


@dataclass
class Section:
    """A titled part of the report (one per experiment, plus overview parts)."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    anchor: str = ""

    def __post_init__(self) -> None:
        if not self.anchor:
            self.anchor = slug(self.title)


@dataclass
class Document:
    """The whole report."""

    title: str
    intro: list[Block] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def tables(self) -> list[dict[str, object]]:
        """Every table as plain data (section, caption, columns, rows), for ``report.json``."""
        out: list[dict[str, object]] = []
        for where, blocks in [("intro", self.intro)] + [
            (s.anchor, s.blocks) for s in self.sections
        ]:
            for block in blocks:
                if isinstance(block, Table):
                    out.append(
                        {
                            "section": where,
                            "caption": block.caption,
                            "columns": list(block.columns),
                            "rows": [list(row) for row in block.rows],
                        }
                    )
        return out


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3em; }
td.ok { background: #dff3df; color: #165c16; font-weight: 600; }
td.bad { background: #f8dddd; color: #8a1414; font-weight: 600; }
td.na { background: #eee; color: #666; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
nav ul { columns: 2; }
p.note { font-size: 0.9em; color: #555; }
"""


def _html_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in block.columns)
        rows = []
        # Only the verdict column is coloured (a claim's own text may start with "holds").
        verdict_col = block.columns.index("verdict") if "verdict" in block.columns else -1
        for row in block.rows:
            cells = []
            for index, cell in enumerate(row):
                css = verdict_class(cell) if index == verdict_col else None
                attr = f' class="{css}"' if css else ""
                cells.append(f"<td{attr}>{html.escape(cell)}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        caption = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
        return (
            f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        alt = html.escape(block.caption, quote=True)
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
            f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
        )
    raise TypeError(
        f"unknown report block {type(block).__name__}; expected Paragraph, Table or Figure"
    )


def render_html(doc: Document) -> str:
    """Return the report as one self-contained HTML page (figures embedded as base64 PNG)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(doc.title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
    ]
    parts += [_html_block(b) for b in doc.intro]
    if doc.sections:
        items = "".join(
            f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in doc.sections
        )
        parts.append(f"<nav><ul>{items}</ul></nav>")
    for section in doc.sections:
        parts.append(f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>')
        parts += [_html_block(b) for b in section.blocks]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_block(block: Block, figure_links: dict[int, str]) -> str:
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Table):
        lines = []
        if block.caption:
            lines.append(f"**{block.caption}**")
            lines.append("")
        lines.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
        lines.append("|" + "---|" * len(block.columns))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Figure):
        link = figure_links.get(id(block))
        return f"![{block.caption}]({link})" if link else f"*Figure: {block.caption}*"
    raise TypeError(
        f"unknown report block {type(block).__name__}; expected Paragraph, Table or Figure"
    )


def render_markdown(doc: Document, figure_links: dict[int, str] | None = None) -> str:
    """Return the report as Markdown; figures link to ``figure_links[id(figure)]`` if given."""
    links = figure_links or {}
    parts = [f"# {doc.title}", ""]
    parts += [_md_block(b, links) + "\n" for b in doc.intro]
    for section in doc.sections:
        parts += [f"## {section.title}", ""]
        parts += [_md_block(b, links) + "\n" for b in section.blocks]
    return "\n".join(parts).rstrip() + "\n"


def figures(blocks: Sequence[Block]) -> list[Figure]:
    """The figures among ``blocks``."""
    return [b for b in blocks if isinstance(b, Figure)]


def render_text_table(table: Table) -> str:
    """A plain-text rendering of ``table`` with aligned columns (for terminal output).

    >>> print(render_text_table(Table(("a", "bb"), (("1", "2"),))))
    a | bb
    --+---
    1 | 2
    """
    widths = [len(c) for c in table.columns]
    for row in table.rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()

    out = [table.caption] if table.caption else []
    out += [line(table.columns), "-+-".join("-" * w for w in widths)]
    out += [line(row) for row in table.rows]
    return "\n".join(out)
