"""A tiny document model rendered both as Markdown and as standalone HTML.

The report is built once as a list of blocks (headings, paragraphs, tables,
images, preformatted text) and written twice, so the Markdown and HTML
versions can never disagree. No template engine or Markdown library is
needed for so few block kinds; all text is HTML-escaped, and the inline
Markdown the report writes (``**bold**``, ``*emphasis*``, ```code```) is
rendered in the HTML of paragraphs, lists, headings and table cells.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


@dataclass
class Document:
    """Ordered blocks of a report; ``to_markdown()`` and ``to_html()`` render them."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("bullets", list(items)))

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", (list(header), [[_cell(c) for c in r] for r in rows])))

    def image(self, rel_path: str, alt: str) -> None:
        self.blocks.append(("image", (rel_path, alt)))

    def markdown(self, text: str) -> None:
        """Markdown written by a method (an extras file), included as it is."""
        self.blocks.append(("markdown", text))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    # -- rendering --------------------------------------------------------------------
    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                out += ["#" * level + " " + text, ""]
            elif kind == "paragraph":
                out += [value, ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in value] + [""]
            elif kind == "table":
                header, rows = value
                out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "image":
                path, alt = value
                out += [f"![{alt}]({path})", ""]
            elif kind == "markdown":
                out += [value.rstrip(), ""]
            elif kind == "code":
                out += ["```", value.rstrip(), "```", ""]
        return "\n".join(out)

    def to_html(self) -> str:
        e = html.escape
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{e(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{e(self.title)}</h1>",
        ]
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                out.append(f"<h{level}>{_inline(text)}</h{level}>")
            elif kind == "paragraph":
                out.append(f"<p>{_inline(value)}</p>")
            elif kind == "bullets":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                header, rows = value
                out.append(_html_table(header, rows))
            elif kind == "image":
                path, alt = value
                out.append(f'<p><img src="{e(path, quote=True)}" alt="{e(alt, quote=True)}"></p>')
            elif kind == "markdown":
                out.append(markdown_to_html(value))
            elif kind == "code":
                out.append(f"<pre>{e(value)}</pre>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_EM = re.compile(r"(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])")


def _emphasis(text: str) -> str:
    """Escape text and render ``**bold**`` and ``*emphasis*`` (not inside words)."""
    out = _STRONG.sub(r"<strong>\1</strong>", html.escape(text))
    return _EM.sub(r"<em>\1</em>", out)


def _inline(text: str) -> str:
    """Escape text, rendering `code` spans, ``**bold**`` and ``*emphasis*``.

    Text inside a code span is shown as it is (no emphasis); an unmatched
    backtick is kept as a literal backtick.
    """
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # odd number of backticks: the last one opens nothing
        parts[-2:] = [parts[-2] + "`" + parts[-1]]
    return "".join(
        f"<code>{html.escape(p)}</code>" if i % 2 else _emphasis(p) for i, p in enumerate(parts)
    )


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_inline(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [c.strip().replace("\\|", "|") for c in line.split("|")]


def markdown_to_html(text: str) -> str:
    """Render the Markdown subset methods write in extras: headings, pipe tables,
    bullet lists, fenced code and paragraphs. Anything else stays as escaped text."""
    lines = text.splitlines()
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append(f"<pre>{html.escape(chr(10).join(lines[i + 1 : j]))}</pre>")
            i = j + 1
            continue
        if stripped.startswith("#"):
            flush()
            level = min(len(stripped) - len(stripped.lstrip("#")), 6)
            out.append(f"<h{level}>{_inline(stripped[level:].strip())}</h{level}>")
        elif stripped.startswith("|") and i + 1 < len(lines) and set(
            lines[i + 1].replace("|", "").replace(":", "").strip()
        ) <= {"-"} and "-" in lines[i + 1]:
            flush()
            header = _split_row(line)
            rows = []
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                rows.append(_split_row(lines[j]))
                j += 1
            out.append(_html_table(header, rows))
            i = j
            continue
        elif stripped.startswith(("- ", "* ")):
            flush()
            items = []
            while i < len(lines) and lines[i].strip().startswith(("- ", "* ")):
                items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif not stripped:
            flush()
        else:
            para.append(stripped)
        i += 1
    flush()
    return "\n".join(out)
