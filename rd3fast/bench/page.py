"""leaderboard.html: the leaderboard's Markdown as one self-contained page to share.

The page is made from the very Markdown ``render`` writes (headings, paragraphs, pipe tables, `code`,
**bold**: the subset it uses), so the two never disagree. Everything is inline: the CSS, a few lines of
JavaScript that sort a table by the clicked column (numerically when the cells start with a number, e.g.
``46.3 ± 0.4 [45.3, 47.3]``), and the figure as a base64 PNG. Nothing is fetched when it is viewed.
``#sort=T:C`` (or ``#sort=T:C:desc``) in the URL sorts table T by column C on load (0-based): a link to a
sorted view, and how tests check sorting in a real browser.
"""
from __future__ import annotations

import base64
import html
import re

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f2;cursor:pointer;user-select:none}th.asc::after{content:" ▲"}th.desc::after{content:" ▼"}
tr:nth-child(even) td{background:#fafafa}code{background:#f2f2f2;padding:0 3px}img{max-width:100%}
h1{font-size:1.5em}h2{font-size:1.25em;margin-top:1.6em}h3{font-size:1.05em;margin-top:1.4em}"""

_JS = r"""
function cellKey(text){const m=text.trim().match(/^[+−-]?\d+(\.\d+)?/);
  return m ? parseFloat(m[0].replace('−','-')) : null;}
function sortTable(table, col, desc){
  const body=table.tBodies[0]; const rows=Array.from(body.rows);
  rows.sort((a,b)=>{const x=a.cells[col].textContent, y=b.cells[col].textContent;
    const kx=cellKey(x), ky=cellKey(y); let c;
    if(kx!==null && ky!==null){c=kx-ky;} else if(kx!==null){c=-1;} else if(ky!==null){c=1;}
    else {c=x.localeCompare(y);} return desc?-c:c;});
  rows.forEach(r=>body.appendChild(r));
  Array.from(table.tHead.rows[0].cells).forEach((th,i)=>{th.classList.remove('asc','desc');
    if(i===col){th.classList.add(desc?'desc':'asc');}});
  table.dataset.sorted=col+':'+(desc?'desc':'asc');}
document.querySelectorAll('table').forEach(t=>{
  Array.from(t.tHead.rows[0].cells).forEach((th,i)=>th.addEventListener('click',()=>{
    sortTable(t,i,t.dataset.sorted===i+':asc');}));});
const m=location.hash.match(/^#sort=(\d+):(\d+)(:desc)?$/);
if(m){const t=document.querySelectorAll('table')[+m[1]]; if(t){sortTable(t,+m[2],!!m[3]);}}
"""


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(markdown: str) -> str:
    """The subset of Markdown the leaderboard writes, as HTML: # headings, pipe tables, paragraphs."""
    lines, out, i = markdown.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"^(#{1,6}) (.*)$", line):
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1]):
            head = "".join(f"<th>{_inline(c)}</th>" for c in _cells(line))
            i += 2
            body = []
            while i < len(lines) and lines[i].startswith("|"):
                body.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(lines[i])) + "</tr>")
                i += 1
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|")):
                para.append(_inline(lines[i]))
                i += 1
            out.append("<p>" + "<br>".join(para) + "</p>")
    return "\n".join(out)


def html_page(markdown: str, png: bytes | None, title: str) -> str:
    """One self-contained HTML document: the Markdown's content, the figure embedded, sortable tables."""
    figure = (f'<h2>Figure</h2><img alt="leaderboard figure" src="data:image/png;base64,'
              f'{base64.b64encode(png).decode()}">') if png else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{markdown_to_html(markdown)}\n{figure}\n"
            f"<script>{_JS}</script></body></html>\n")
