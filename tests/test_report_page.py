"""leaderboard.html: one self-contained page (no network at view time) with the leaderboard's tables, the
figure embedded, and tables that sort by column, checked in a real headless browser (Debian's chromium,
installed by .ci/run); and the PNG's rules: points with interval bars, no empty panel."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_leaderboard import finished, make_root

from rd3fast.bench import page, render


def board_root(tmp_path: Path, own: bool = False) -> Path:
    runs = (finished("random-ipc10", "random-real", 10, "A", [30.0, 31.0, 32.0])
            + finished("rded-ipc10", "rded", 10, "A", [45.0, 46.0, 47.5])
            + finished("sre2l-ipc10", "sre2l", 10, "A", [38.0, 39.5, 40.0]))
    if own:
        runs += (finished("rded-ipc10", "rded", 10, "own", [44.0, 45.0, 46.0], preset="rded")
                 + finished("sre2l-ipc10", "sre2l", 10, "own", [20.0, 22.0, 21.0], preset="sre2l")
                 + finished("random-ipc10", "random-real", 10, "own", [30.0, 31.0, 32.0]))
    return make_root(tmp_path, runs)


def test_page_is_self_contained_and_matches_the_markdown(tmp_path: Path) -> None:
    paths = render.write_report(board_root(tmp_path))
    text = paths["html"].read_text()
    assert text.startswith("<!DOCTYPE html>") and "data:image/png;base64," in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing fetched when viewed
    md = paths["md"].read_text()
    tables = [b for b in md.split("\n\n") if b.startswith("|")]
    assert text.count("<table>") == len(tables) > 0
    assert "<td>rded-ipc10</td>" in text and "<h3>Rank groups" in text


def test_markdown_subset() -> None:
    out = page.markdown_to_html("# T\n\nsome `code` and **bold**\n\n| a | b |\n|---|---|\n| 1 | x<y |\n")
    assert "<h1>T</h1>" in out and "<code>code</code>" in out and "<b>bold</b>" in out
    assert "<thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>1</td><td>x&lt;y</td></tr></tbody>" in out


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_browser() is None, reason="no headless chromium on this machine (.ci/run installs Debian's "
                                                "chromium; setup.sh does not, to keep a user's set-up small)")
def test_page_renders_and_sorts_in_a_real_browser(tmp_path: Path) -> None:
    """The browser's DOM after the page's script ran: the first table (the per-protocol cells) sorted by its
    protocol column, descending and ascending, puts the sets in the order of their means."""
    html_path = render.write_report(board_root(tmp_path))["html"]
    md = html_path.with_suffix(".md").read_text()
    first = next(b for b in md.split("\n\n") if b.startswith("|")).splitlines()
    column = next(i for i, h in enumerate(page._cells(first[0])) if h.startswith("A"))  # noqa: SLF001 - test

    def dom(fragment: str) -> str:
        proc = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                               f"file://{html_path}{fragment}"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    def first_column_order(text: str) -> list[str]:
        body = text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
        return [re.sub(r"<[^>]+>", "", row.split("</td>", 1)[0]) for row in body.split("<tr>")[1:]]

    assert first_column_order(dom(f"#sort=0:{column}:desc")) == ["rded-ipc10", "sre2l-ipc10",
                                                                 "random-ipc10 (baseline)"]
    assert first_column_order(dom(f"#sort=0:{column}")) == ["random-ipc10 (baseline)", "sre2l-ipc10", "rded-ipc10"]
    assert 'class="desc"' in dom(f"#sort=0:{column}:desc")


def test_png_has_no_empty_panel(tmp_path: Path) -> None:
    """Without an own protocol and with spreads to show: two panels; a view with one method has no spread:
    one panel only (the figure is shorter), never an empty one."""
    two = Image.open(render.write_report(board_root(tmp_path / "a"))["png"]).size
    own = Image.open(render.write_report(board_root(tmp_path / "b", own=True))["png"]).size
    one = make_root(tmp_path / "c", finished("rded-ipc10", "rded", 10, "A", [45.0, 46.0]))
    single = Image.open(render.write_report(one)["png"]).size
    assert two[1] == own[1] > single[1]
