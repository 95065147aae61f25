"""Small HTML builders for the report: escaping, embedded images, figures and tables.

Everything is inlined (images as ``data:`` URIs, one ``<style>`` block, no script), so a page
is one file that works offline and can be mailed or attached to an issue.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

Cell = str | tuple[str, dict[str, str]]  # text, or (text, attributes) e.g. colspan

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1080px; padding: 1rem 1.5rem 3rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom:
     2px solid #0072B2; padding-bottom: .2rem; } h3 { margin-top: 1.6rem; }
.muted { color: #555; font-size: .9rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }
th { background: #f0f4f8; } caption { text-align: left; font-size: .95rem; padding: .2rem 0; } td.label, th.label { text-align: left; }
table.summary td { text-align: left; vertical-align: top; max-width: 28rem;
                   overflow-wrap: anywhere; }
figure { margin: 1rem 0 1.6rem; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: .9rem; color: #333; margin-top: .3rem; }
.note { background: #fff8e6; border-left: 4px solid #E69F00; padding: .4rem .8rem; }
.legend span { margin-right: 1.2rem; }
.query { display: flex; gap: .8rem; align-items: flex-start; margin: .9rem 0;
         padding-bottom: .9rem; border-bottom: 1px solid #e5e5e5; }
.query .what { flex: 0 0 11rem; font-size: .95rem; }
.hits { display: flex; gap: .5rem; flex-wrap: wrap; }
.hit { width: 9.5rem; border: 2px solid #d0d0d0; padding: .3rem; font-size: .85rem;
       border-radius: 4px; }
.hit img, .query img { width: 100%; image-rendering: pixelated; display: block; }
.query .what img { width: 8rem; }
.hit.truth { border: 3px solid #0072B2; }
.hit.relevant { border: 3px dashed #E69F00; }
.badge { font-weight: 600; display: block; }
.truth .badge { color: #0072B2; } .relevant .badge { color: #9a6700; }
.noimg { background: #eee; color: #555; height: 6rem; display: flex; align-items: center;
         justify-content: center; text-align: center; font-size: .75rem; }
"""


def esc(text: object) -> str:
    """``text`` as HTML text (quotes escaped too, so it is safe inside attributes)."""
    return html.escape(str(text), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    """A ``data:`` URI embedding ``data``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, mime: str, alt: str) -> str:
    """An ``<img>`` with the image embedded and its alt text."""
    return f'<img src="{data_uri(data, mime)}" alt="{esc(alt)}">'


def figure(png: bytes, title: str, alt: str) -> str:
    """A figure: the PNG (alt text for screen readers) and a caption with its title and text."""
    return (f"<figure>{img(png, 'image/png', alt)}<figcaption><strong>{esc(title)}.</strong> "
            f"{esc(alt)}</figcaption></figure>")


def _cell(tag: str, cell: Cell, first: bool) -> str:
    text, attrs = (cell, {}) if isinstance(cell, str) else cell
    attrs = dict(attrs)
    if first:
        attrs["class"] = (attrs.get("class", "") + " label").strip()
    rendered = "".join(f' {k}="{esc(v)}"' for k, v in attrs.items())
    return f"<{tag}{rendered}>{text}</{tag}>"


def table(head: Sequence[Sequence[Cell]], body: Sequence[Sequence[Cell]], css: str = "",
          caption: str = "") -> str:
    """A table; cells are HTML (escape text first) or (HTML, attributes); column 0 is a label."""
    rows = ["<tr>" + "".join(_cell("th", c, i == 0) for i, c in enumerate(r)) + "</tr>"
            for r in head]
    rows += ["<tr>" + "".join(_cell("td", c, i == 0) for i, c in enumerate(r)) + "</tr>"
             for r in body]
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}>{cap}<thead>{''.join(rows[:len(head)])}</thead>" \
           f"<tbody>{''.join(rows[len(head):])}</tbody></table>"


def page(title: str, body: str) -> str:
    """A complete HTML5 document (inline style, no script, no external resource)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<link rel=\"icon\" href=\"data:,\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
