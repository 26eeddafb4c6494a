"""The leaderboard reads a sweep ROOT built by hand here (plan.json, run.json, results.json with chosen
numbers): no training, so every number it prints can be checked against a hand-worked value."""
from __future__ import annotations

import csv
import json
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from rd3fast.bench import board as lb
from rd3fast.bench import render
from rd3fast.bench import stats as board_stats
from rd3fast.errors import RD3Error

_ids = count()


def info(set_name: str, method: str, ipc: int, protocol: str, seed: int, *, preset: str | None = None,
         student: str = "convnet-d3-w32", grid: dict[str, Any] | None = None) -> dict[str, Any]:
    """A RunInfo as the sweep writes it (the id only has to be unique here)."""
    return {"id": f"run{next(_ids):04d}", "set": {"name": set_name, "method": method, "ipc": ipc,
                                                  "path": f"syn/{set_name}", "baseline": method == "random-real",
                                                  "images": 10 * ipc},
            "protocol": protocol, "preset": preset or protocol, "student": student, "seed": seed,
            "grid": grid or {}, "teachers": [], "config": {}}


def result(run: dict[str, Any], last: float | None, best: float | None = None, *, heldout: float | None = None,
           error: str | None = None, group: str = "g0", k: int = 1, wall: float = 60.0,
           ips: float = 1000.0) -> dict[str, Any]:
    """A results.json: ok with ``last``, failed with ``error``."""
    best = last if best is None else best
    summary = {"seed": run["seed"], "status": "failed" if error else "ok", "failure": error,
               "last_top1": None if error else last, "best_top1": None if error else best,
               "last_top5": None, "best_top5": None, "best_epoch": 10, "train_time_s": wall * 0.9,
               "images_per_s": ips, "first_step_s": 0.1, "epochs": [], "evals": [], "notes": []}
    if heldout is not None:
        summary["last_heldout_top1"] = heldout
    return {"schema": 1, "id": run["id"], "status": "failed" if error else "ok", "error": error, "run": summary,
            "group": {"key": group, "k": k, "device": "cpu (2 cores)"}, "wall_s": wall, "finished": "now"}


def make_root(root: Path, runs: list[tuple[dict[str, Any], dict[str, Any] | None]], *,
              select: dict[str, Any] | None = None, protocols: list[str] | None = None) -> Path:
    """ROOT with plan.json and, per run, run.json and (when given) results.json."""
    infos = [i for i, _ in runs]
    groups: dict[str, list[str]] = {}
    for i, res in runs:
        groups.setdefault(res["group"]["key"] if res else f"g-{i['id']}", []).append(i["id"])
    plan = {"schema": 1, "sweep": "sweep.toml", "created": "2025-01-01T00:00:00", "runs": infos,
            "groups": [{"key": k, "runs": v} for k, v in groups.items()], "select": select,
            "protocols": protocols or list(dict.fromkeys(i["protocol"] for i in infos)),
            "sets": list(dict.fromkeys(i["set"]["name"] for i in infos))}
    root.mkdir(parents=True, exist_ok=True)
    (root / "plan.json").write_text(json.dumps(plan))
    for i, res in runs:
        folder = root / "runs" / i["id"]
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps(i))
        if res is not None:
            (folder / "results.json").write_text(json.dumps(res))
    return root


INFO_KEYS = ("preset", "student", "grid")


def finished(set_name: str, method: str, ipc: int, protocol: str, lasts: list[float],
             **kw: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Runs of one cell, seeds 0.., all finished with the given last top-1 (best = last + 1); keyword
    arguments go to info() (preset, student, grid) or result() (group, k, wall, ips, heldout)."""
    to_info = {k: v for k, v in kw.items() if k in INFO_KEYS}
    to_result = {k: v for k, v in kw.items() if k not in INFO_KEYS}
    out = []
    for seed, last in enumerate(lasts):
        i = info(set_name, method, ipc, protocol, seed, **to_info)
        out.append((i, result(i, last, last + 1.0, **to_result)))
    return out


def cell(board: lb.Board, set_name: str, protocol: str, student: str = "convnet-d3-w32",
         grid: lb.GridKey = ()) -> lb.Cell:
    return board.cells[((student, set_name, grid), protocol)]


def test_mean_std_n_and_cell_text(tmp_path: Path) -> None:
    root = make_root(tmp_path, finished("rded-ipc10", "rded", 10, "rd3-small", [40.0, 42.0, 44.0]))
    c = cell(lb.load(root), "rded-ipc10", "rd3-small")
    assert (c.mean, c.std, c.n, c.best) == (42.0, 2.0, 3, 43.0)  # stdev of 40, 42, 44 (n - 1) is 2
    # 95 % Student-t interval: 42 ± t(0.975, 2) * 2 / sqrt(3) = 42 ± 4.303 * 1.155 = [37.0, 47.0]
    assert render.cell_text(c) == "42.0 ± 2.0 [37.0, 47.0] (n=3) / best 43.0"


def test_ior_against_the_random_real_set_of_the_same_ipc(tmp_path: Path) -> None:
    runs = (finished("random-ipc10", "random-real", 10, "rd3-small", [30.0, 32.0])
            + finished("random-ipc50", "random-real", 50, "rd3-small", [50.0])
            + finished("rded-ipc10", "rded", 10, "rd3-small", [40.0, 42.0])
            + finished("rded-ipc50", "rded", 50, "rd3-small", [55.0])
            + finished("rded-ipc10", "rded", 10, "other", [45.0]))  # no baseline under "other"
    board = lb.load(make_root(tmp_path, runs))
    row = lambda s: ("convnet-d3-w32", s, ())  # noqa: E731
    assert board_stats.ior(board, row("rded-ipc10"), "rd3-small") == pytest.approx(10.0)
    assert board_stats.ior(board, row("rded-ipc50"), "rd3-small") == pytest.approx(5.0)
    assert board_stats.ior(board, row("rded-ipc10"), "other") is None
    assert board_stats.ior(board, row("random-ipc10"), "rd3-small") is None  # the baseline itself
    md = render.render_markdown(board)
    # seeds 0 and 1 of both sets differ by exactly 10: the paired interval has no width
    assert "| rded-ipc10 | rded | 10 | +10.0 [+10.0, +10.0] |  |" in md
    assert "| random-ipc10 (baseline) | random-real | 10 | baseline | baseline |" in md


@pytest.mark.parametrize("x, y, tau", [
    ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),  # identical ranking
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),  # reversed
    ([1, 2, 3], [1, 3, 2], 1 / 3),  # one swap among 3: (2 concordant - 1 discordant) / 3
    ([1, 2], [5, 5], None),  # one side all ties: no order to agree with
    ([1], [1], None),
])
def test_kendall_tau_hand_worked(x: list[float], y: list[float], tau: float | None) -> None:
    got = board_stats.kendall_tau(x, y)
    assert got == (None if tau is None else pytest.approx(tau))


def test_kendall_tau_b_with_ties_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    x, y = [1, 2, 2, 3, 4, 4, 5], [2, 1, 3, 3, 5, 4, 4]
    assert board_stats.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)  # tau-b, scipy's default


def three_methods_two_protocols() -> list:
    """Under A the order is rded > sre2l > cda; under B cda and sre2l swap. Baseline lowest under both."""
    return (finished("random", "random-real", 10, "A", [20.0]) + finished("rded", "rded", 10, "A", [50.0])
            + finished("sre2l", "sre2l", 10, "A", [40.0]) + finished("cda", "cda", 10, "A", [30.0])
            + finished("random", "random-real", 10, "B", [25.0]) + finished("rded", "rded", 10, "B", [46.0])
            + finished("sre2l", "sre2l", 10, "B", [42.0]) + finished("cda", "cda", 10, "B", [44.0]))


def test_spread_excludes_the_baseline_and_tau_over_common_sets(tmp_path: Path) -> None:
    board = lb.load(make_root(tmp_path, three_methods_two_protocols()))
    (view,) = board_stats.views(board)
    a, b = board_stats.spread(board, view, "A"), board_stats.spread(board, view, "B")
    assert (a.value, a.best, a.worst, a.sets) == (20.0, "rded", "cda", 3)  # 50 - 30, random-real not in it
    assert (b.value, b.best, b.worst) == (4.0, "rded", "sre2l")
    g = board_stats.agreement(board, view, "A", "B")
    # 4 sets (baseline included), 6 pairs, one swapped (sre2l/cda): (5 - 1) / 6
    assert (g.sets, g.tau) == (4, pytest.approx(4 / 6))
    md = render.render_markdown(board)
    assert "| IPC 10 | A | 20.0 | rded | cda | 3 |" in md and "| IPC 10 | A | B | +0.67 | 4 |" in md
    assert "non-baseline sets only" in md


def test_own_vs_rectified(tmp_path: Path) -> None:
    runs = (finished("random", "random-real", 10, "own", [20.0], preset="rd3-small")
            + finished("rded", "rded", 10, "own", [50.0], preset="rded-small")
            + finished("sre2l", "sre2l", 10, "own", [30.0], preset="sre2l")
            + finished("random", "random-real", 10, "rd3-small", [24.0])
            + finished("rded", "rded", 10, "rd3-small", [45.0])
            + finished("sre2l", "sre2l", 10, "rd3-small", [41.0]))
    board = lb.load(make_root(tmp_path, runs))
    (view,) = board_stats.views(board)
    rows = {name: (own.mean, cells["rd3-small"].mean) for name, own, cells in board_stats.own_rows(board, view)}
    assert rows == {"random": (20.0, 24.0), "rded": (50.0, 45.0), "sre2l": (30.0, 41.0)}
    md = render.render_markdown(board)
    assert "| rded | rded-small | 50.0 | 45.0 | +5.0 |" in md
    assert "| sre2l | sre2l | 30.0 | 41.0 | -11.0 |" in md
    assert "own recipes 20.0 → rd3-small 4.0 points" in md  # 50 - 30 under own, 45 - 41 rectified
    assert "[rded-small]" in md  # the own column names the preset each row resolved to


def test_heldout_selection_reports_test_top1_at_the_chosen_value(tmp_path: Path) -> None:
    runs = []
    # lr 1e-3: held-out 50, 52 (mean 51), test 40, 41; lr 2e-3: held-out 55, 53 (mean 54), test 38, 39.
    for lr, held, test in ((1e-3, (50.0, 52.0), (40.0, 41.0)), (2e-3, (55.0, 53.0), (38.0, 39.0))):
        for seed in range(2):
            i = info("rded", "rded", 10, "rd3-small", seed, grid={"lr": lr})
            runs.append((i, result(i, test[seed], heldout=held[seed])))
    root = make_root(tmp_path, runs, select={"keys": ["lr"], "mode": "heldout", "size": 100, "seed": 0})
    board = lb.load(root)
    c = cell(board, "rded", "rd3-small")
    assert c.choice == {"lr": 2e-3} and c.heldout == pytest.approx(54.0)
    assert (c.mean, c.n) == (pytest.approx(38.5), 2)  # the test top-1 at the chosen value only
    assert "38.5 ± 0.7 [32.1, 44.9] (n=2) / best 38.5 · lr=0.002 (held-out 54.0)" in render.render_markdown(board)
    render.write_report(root)
    selected = {r["grid.lr"]: r["selected"] for r in csv.DictReader((root / "leaderboard.csv").open())}
    assert selected == {"0.001": "no", "0.002": "yes"}


def test_grid_without_selection_is_one_row_per_grid_point(tmp_path: Path) -> None:
    runs = (finished("rded", "rded", 10, "rd3-small", [40.0], grid={"lr": 1e-3})
            + finished("rded", "rded", 10, "rd3-small", [44.0], grid={"lr": 2e-3}))
    board = lb.load(make_root(tmp_path, runs))
    assert len(board.rows) == 2
    md = render.render_markdown(board)
    assert "| rded | rded | 10 | 0.001 | 40.0 (n=1)" in md and "| rded | rded | 10 | 0.002 | 44.0" in md


def test_unfinished_and_failed_cells_are_marked(tmp_path: Path) -> None:
    i = [info("s", "rded", 10, p, seed) for p in ("partial", "pending", "failed", "mixed") for seed in range(3)]
    runs = [(i[0], result(i[0], 40.0)), (i[1], result(i[1], 42.0)), (i[2], None),  # 2/3 done
            (i[3], None), (i[4], None), (i[5], None),  # pending
            *((r, result(r, None, error="non-finite loss at epoch 3")) for r in i[6:9]),  # failed
            (i[9], result(i[9], 40.0)), (i[10], result(i[10], None, error="out of memory")),
            (i[11], result(i[11], 41.0))]
    board = lb.load(make_root(tmp_path, runs))
    text = {p: render.cell_text(cell(board, "s", p)) for p in ("partial", "pending", "failed", "mixed")}
    assert text == {"partial": "41.0 ± 1.4 [28.3, 53.7] (n=2) / best 41.0 · 2/3 done", "pending": "pending", "failed": "failed",
                    "mixed": "40.5 ± 0.7 [34.1, 46.9] (n=2) / best 40.5 · 1 failed"}
    md = render.render_markdown(board)
    assert "12 runs: 4 ok, 4 failed, 4 pending or running" in md
    assert "## Failed runs" in md and "non-finite loss at epoch 3" in md and "out of memory" in md


def test_csv_header_rows_and_atomic_files(tmp_path: Path) -> None:
    pending = info("rded", "rded", 10, "rd3-small", 0, grid={"lr": 1e-3})
    runs = finished("random", "random-real", 10, "rd3-small", [30.0, 31.0], grid={"lr": 1e-3}) + [(pending, None)]
    root = make_root(tmp_path / "root", runs)
    paths = render.write_report(root)
    assert paths == {k: root / f"leaderboard.{k}" for k in ("md", "csv", "png", "html")}
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(root.glob("*.tmp")) and not list(root.glob(".*tmp*"))
    rows = list(csv.reader(paths["csv"].open()))
    assert rows[0] == ["id", "set", "method", "ipc", "baseline", "protocol", "role", "preset", "student", "grid.lr",
                       "seed",
                       "status", "selected", "last_top1", "best_top1", "last_heldout_top1", "images_per_s",
                       "train_time_s", "wall_s", "group_key", "k", "device", "error"]
    assert len(rows) == 1 + 3
    by_id = {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    assert by_id[pending["id"]]["status"] == "pending" and by_id[pending["id"]]["last_top1"] == ""
    assert paths["md"].read_text() == render.format_leaderboard(root)


def test_device_hours_count_each_group_once(tmp_path: Path) -> None:
    # group a: 3 runs trained at once for an hour (each results.json records the group's hour);
    # group b: one run, half an hour. 1.5 device-hours, not 3.5.
    runs = (finished("s", "rded", 10, "P", [40.0, 41.0, 42.0], group="a", k=3, wall=3600.0, ips=900.0)
            + finished("t", "rded", 10, "P", [40.0], group="b", k=1, wall=1800.0, ips=100.0))
    board = lb.load(make_root(tmp_path, runs))
    t = board_stats.throughput(board)
    assert t.device_hours == pytest.approx(1.5)
    assert (t.groups, t.planned_groups, t.k_counts) == (2, 2, {1: 1, 3: 1})
    assert t.img_per_s == {"P": 900.0}  # median of 900, 900, 900, 100
    assert "1.500 device-hours" in render.render_markdown(board)


def test_not_a_sweep_root(tmp_path: Path) -> None:
    with pytest.raises(RD3Error, match="not a sweep root: no plan.json"):
        render.format_leaderboard(tmp_path)
    with pytest.raises(RD3Error, match="not a sweep root"):
        render.write_report(tmp_path / "missing")


def test_running_root_reports_what_is_there(tmp_path: Path) -> None:
    """A plan listing runs whose folders do not exist yet, or only ids: they are pending or left out."""
    done = finished("rded", "rded", 10, "P", [40.0])
    root = make_root(tmp_path, done)
    plan = json.loads((root / "plan.json").read_text())
    later = info("rded", "rded", 10, "P", 1)
    plan["runs"] += [later, "id-without-run-json"]
    (root / "plan.json").write_text(json.dumps(plan))
    board = lb.load(root)
    assert board.skipped == 1 and [r.status for r in board.runs] == ["ok", "pending"]
    assert render.cell_text(cell(board, "rded", "P")) == "40.0 (n=1) / best 41.0 · 1/2 done"
    (view,) = board_stats.views(board)
    assert board_stats.spread(board, view, "P").final is False  # a pending run may still change it
    render.write_report(root)
    damaged = info("cda", "cda", 10, "P", 0)  # results.json is written atomically: this is damage, shown
    plan["runs"].append(damaged)
    (root / "plan.json").write_text(json.dumps(plan))
    (root / "runs" / damaged["id"]).mkdir()
    (root / "runs" / damaged["id"] / "results.json").write_text("{")
    assert render.cell_text(cell(lb.load(root), "cda", "P")) == "failed"
    assert "unreadable JSON" in render.format_leaderboard(root)
    # nothing finished anywhere is fine too
    empty = make_root(tmp_path / "empty", [(info("x", "rded", 10, "P", 0), None)])
    assert "pending" in render.format_leaderboard(empty) and render.write_report(empty)["png"].exists()


def test_one_table_per_student(tmp_path: Path) -> None:
    runs = (finished("rded", "rded", 10, "P", [40.0], student="convnet")
            + finished("rded", "rded", 10, "P", [60.0], student="resnet18"))
    md = render.format_leaderboard(make_root(tmp_path, runs))
    assert "## Student convnet" in md and "## Student resnet18" in md
    assert md.index("40.0 (n=1)") < md.index("## Student resnet18") < md.index("60.0 (n=1)")
    assert "| convnet, IPC 10 | P |" in md  # spreads are per student too
