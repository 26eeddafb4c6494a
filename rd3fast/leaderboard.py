"""The leaderboard of a sweep ROOT: what ``python -m rd3fast.bench report ROOT`` prints and writes.

It only reads what the sweep left behind (``ROOT/plan.json``, ``ROOT/runs/<id>/run.json`` and
``results.json``), so it can be run at any time, also while the sweep is still going: finished runs are
reported, the rest marked (``2/3 done``, ``pending``, ``failed``). Nothing here trains or imports a model.

What it computes, per student:

- a table with rows = sets (method, IPC; one row per grid point when there is a grid without selection)
  and columns = protocols: last-epoch test top-1 mean ± std over the finished seeds, and the mean of each
  seed's best evaluation. With a held-out selection (plan ``select``) a cell holds the test top-1 at the
  grid value whose mean held-out top-1 is best, so the test set never chooses anything;
- IOR (DD-Ranking's "improvement over random"): mean top-1 minus that of the random-real baseline of the
  same IPC under the same protocol (and student, and grid point);
- per protocol and IPC the spread (best − worst mean over the non-baseline sets) and, between every two
  protocols, the rank agreement (Kendall tau-b) over the sets both have: the RD³ study's point is that
  methods' own recipes spread and reorder the methods far more than one rectified protocol does;
- the "own recipe vs rectified" view when a protocol is named ``own``;
- throughput: img/s and wall time per run, device-hours per sweep (each K-at-once group counted once).

The Markdown (leaderboard.md, also printed), leaderboard.csv (one line per run) and leaderboard.png are
written atomically: a reader (or a sweep that reports after every group) never sees half a file.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Hashable, Iterable, Sequence, TypeVar

from .atomic import atomic_write
from .errors import RD3Error
from .results import mean_std

H = TypeVar("H", bound=Hashable)
OWN = "own"  # the protocol name that means "each set's method's own preset"
GridKey = tuple[tuple[str, str], ...]  # ((key, json of value), ...): hashable grid values
RowKey = tuple[str, str, GridKey]  # (student, set name, the grid values that are not selected)
CSV_FIXED = ("id", "set", "method", "ipc", "baseline", "protocol", "preset", "student")
CSV_TAIL = ("seed", "status", "selected", "last_top1", "best_top1", "last_heldout_top1", "images_per_s",
            "train_time_s", "wall_s", "group_key", "k", "device", "error")
FAILED_LISTED = 20  # failed runs named in the Markdown; all of them are in the CSV


# ---------------------------------------------------------------------------------------------------
# Reading ROOT
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One planned run and, once it finished, its outcome (flattened from run.json + results.json)."""

    id: str
    set: str
    method: str
    ipc: int | None
    baseline: bool
    protocol: str
    preset: str
    student: str
    seed: int | None
    grid: dict[str, Any]
    status: str  # "ok" | "failed" | "pending" (no results.json yet: not started or running)
    last_top1: float | None = None
    best_top1: float | None = None
    last_heldout_top1: float | None = None
    images_per_s: float | None = None
    train_time_s: float | None = None
    wall_s: float | None = None
    group_key: str | None = None
    k: int | None = None
    device: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status != "pending"


@dataclass
class Board:
    """Everything the report shows, read once from ROOT."""

    root: Path
    plan: dict[str, Any]
    runs: list[Run]
    sets: list[str]  # plan order
    protocols: list[str]  # plan (TOML) order
    students: list[str]
    grid_keys: list[str]
    select_keys: list[str]  # grid keys chosen on the held-out split; [] without selection
    cells: dict[tuple[RowKey, str], Cell] = field(default_factory=dict)  # (row, protocol) -> cell
    rows: list[RowKey] = field(default_factory=list)
    skipped: int = 0  # plan entries without any run information
    first: dict[str, Run] = field(default_factory=dict)  # set name -> its first run

    def set_info(self, name: str) -> Run:
        """A run of the set (for its method, IPC and baseline flag, which all its runs share)."""
        if not self.first:
            for run in self.runs:
                self.first.setdefault(run.set, run)
        return self.first[name]


def load(root: str | Path) -> Board:
    """Read a sweep ROOT. The plan is the authority on which runs belong to the sweep: run folders of an
    earlier plan (another TOML, other epochs) may still lie in ROOT/runs and must not be mixed in."""
    root = Path(root)
    plan_file = root / "plan.json"
    if not plan_file.is_file():
        raise RD3Error(f"{root}: not a sweep root: no plan.json")
    plan = _read_json(plan_file)
    if not isinstance(plan, dict):
        raise RD3Error(f"{plan_file}: not a sweep plan (expected a JSON object)")
    group_of = {rid: g.get("key") for g in plan.get("groups") or [] for rid in g.get("runs", [])}
    runs, skipped = [], 0
    for entry in plan.get("runs") or []:
        run = _load_run(root, entry, group_of)
        if run is None:
            skipped += 1
        else:
            runs.append(run)
    grid_keys = _ordered(k for r in runs for k in r.grid)
    select = plan.get("select") or None
    select_keys = [k for k in (select.get("keys") or grid_keys) if k in grid_keys] if select else []
    board = Board(root=root, plan=plan, runs=runs, skipped=skipped,
                  sets=_ordered([*(plan.get("sets") or []), *(r.set for r in runs)]),
                  protocols=_ordered([*(plan.get("protocols") or []), *(r.protocol for r in runs)]),
                  students=_ordered(r.student for r in runs), grid_keys=grid_keys, select_keys=select_keys)
    board.sets = [s for s in board.sets if any(r.set == s for r in runs)]
    board.protocols = [p for p in board.protocols if any(r.protocol == p for r in runs)]
    _fill_cells(board)
    return board


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RD3Error(f"{path}: unreadable JSON ({e})") from None


def _ordered(items: Iterable[H]) -> list[H]:
    """First-seen order without repeats: the plan's order, then whatever the runs add."""
    return list(dict.fromkeys(items))


def _load_run(root: Path, entry: Any, group_of: dict[str, str]) -> Run | None:
    """A plan entry (a RunInfo, or just an id while the plan is being written) and its results, if any."""
    info = entry if isinstance(entry, dict) else None
    rid = info.get("id") if info else entry
    if not isinstance(rid, str):
        return None
    folder = root / "runs" / rid
    if info is None or "set" not in info:
        try:
            info = _read_json(folder / "run.json") if (folder / "run.json").is_file() else None
        except RD3Error:
            info = None
        if not isinstance(info, dict) or "set" not in info:
            return None  # counted as "no run information yet"
    result = None
    if (folder / "results.json").is_file():
        try:
            result = _read_json(folder / "results.json")
        except RD3Error as e:  # written atomically, so this is damage: show it rather than hide the run
            result = {"status": "failed", "error": str(e)}
        if not isinstance(result, dict):
            result = {"status": "failed", "error": f"{folder / 'results.json'}: not a results object"}
    return _make_run({**info, "id": rid}, result, group_of.get(rid))


def _make_run(info: dict[str, Any], result: dict[str, Any] | None, planned_group: str | None) -> Run:
    s = info.get("set") or {}
    method = s.get("method", "")
    common = dict(id=info["id"], set=s.get("name", "?"), method=method, ipc=s.get("ipc"),
                  baseline=bool(s.get("baseline", method == "random-real")), protocol=info.get("protocol", "?"),
                  preset=info.get("preset") or info.get("protocol", "?"), student=info.get("student", "?"),
                  seed=info.get("seed"), grid=dict(info.get("grid") or {}))
    if result is None:
        return Run(**common, status="pending", group_key=planned_group)
    summary = result.get("run") or {}
    group = result.get("group") or {}
    status = "ok" if result.get("status") == "ok" and summary.get("last_top1") is not None else "failed"
    error = result.get("error") or summary.get("failure")
    if status == "failed" and not error:
        error = "no test top-1 recorded"
    return Run(**common, status=status, last_top1=summary.get("last_top1"), best_top1=summary.get("best_top1"),
               last_heldout_top1=summary.get("last_heldout_top1"), images_per_s=summary.get("images_per_s"),
               train_time_s=summary.get("train_time_s"), wall_s=result.get("wall_s"),
               group_key=group.get("key") or planned_group, k=group.get("k"), device=group.get("device"),
               error=error)


# ---------------------------------------------------------------------------------------------------
# Cells: one (set row, protocol) of one student
# ---------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """The runs of one (student, set, protocol, non-selected grid values), and what the table shows.

    ``chosen`` are the runs the numbers come from: all of them without selection, those at the grid value
    with the best mean held-out top-1 with it. ``runs`` (every grid value) decides whether it is final."""

    runs: list[Run]
    chosen: list[Run]
    choice: dict[str, Any] = field(default_factory=dict)
    heldout: float | None = None  # mean held-out top-1 at the choice

    @property
    def ok(self) -> list[Run]:
        return [r for r in self.chosen if r.status == "ok"]

    @property
    def mean(self) -> float | None:
        ok = self.ok
        return mean_std([r.last_top1 for r in ok])[0] if ok else None

    @property
    def std(self) -> float | None:
        ok = self.ok
        return mean_std([r.last_top1 for r in ok])[1] if ok else None

    @property
    def best(self) -> float | None:
        """Mean over seeds of each seed's best evaluation (the number many papers report)."""
        best = [r.best_top1 for r in self.ok if r.best_top1 is not None]
        return statistics.fmean(best) if best else None

    @property
    def n(self) -> int:
        return len(self.ok)

    @property
    def done(self) -> int:
        return sum(r.finished for r in self.runs)

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.runs)

    @property
    def final(self) -> bool:
        return self.done == len(self.runs)

    @property
    def presets(self) -> list[str]:
        return _ordered(r.preset for r in self.runs)


def grid_key(grid: dict[str, Any], keys: Sequence[str]) -> GridKey:
    """Hashable grid values of ``keys`` (JSON text: a value may be a list, e.g. betas)."""
    return tuple((k, json.dumps(grid[k], sort_keys=True)) for k in keys if k in grid)


def _fill_cells(board: Board) -> None:
    """Group the runs into cells (rows in set order, grid points in plan order) and make the selections."""
    row_keys = [k for k in board.grid_keys if k not in board.select_keys]
    groups: dict[tuple[RowKey, str], list[Run]] = {}
    for run in board.runs:
        row = (run.student, run.set, grid_key(run.grid, row_keys))
        groups.setdefault((row, run.protocol), []).append(run)
    rows = _ordered(row for row, _ in groups)
    order = {s: i for i, s in enumerate(board.sets)}
    board.rows = sorted(rows, key=lambda row: (board.students.index(row[0]), order[row[1]]))  # stable: grid order
    board.cells = {key: _select(runs, board.select_keys) for key, runs in groups.items()}


def _select(runs: list[Run], keys: Sequence[str]) -> Cell:
    """Without selection keys, every run counts. With them, the grid value with the best mean held-out
    top-1 over its finished seeds (the first in grid order on a tie); the test top-1 is reported there only.
    While runs are pending the choice is provisional (the cell says how many are done)."""
    if not keys:
        return Cell(runs=runs, chosen=runs)
    points: dict[GridKey, list[Run]] = {}
    for run in runs:
        points.setdefault(grid_key(run.grid, keys), []).append(run)
    scored = []
    for point, members in points.items():
        held = [r.last_heldout_top1 for r in members if r.status == "ok" and r.last_heldout_top1 is not None]
        if held:
            scored.append((statistics.fmean(held), point))
    if not scored:
        return Cell(runs=runs, chosen=[])
    heldout, point = max(scored, key=lambda s: s[0])  # max keeps the first of equal scores
    return Cell(runs=runs, chosen=points[point], choice={k: json.loads(v) for k, v in point}, heldout=heldout)


# ---------------------------------------------------------------------------------------------------
# IOR, spread, rank agreement
# ---------------------------------------------------------------------------------------------------
def ior(board: Board, row: RowKey, protocol: str) -> float | None:
    """Mean top-1 minus the random-real baseline's of the same IPC, protocol, student and grid point
    (DD-Ranking's IOR); None for a baseline row, or when either mean is missing."""
    cell = board.cells.get((row, protocol))
    info = board.set_info(row[1])
    if cell is None or cell.mean is None or info.baseline:
        return None
    for name in board.sets:
        other = board.set_info(name)
        if other.baseline and other.ipc == info.ipc:
            base = board.cells.get(((row[0], name, row[2]), protocol))
            if base is not None and base.mean is not None:
                return cell.mean - base.mean
    return None


@dataclass(frozen=True)
class View:
    """Sets that can be compared with each other: one student, one IPC, one (non-selected) grid point."""

    student: str
    ipc: int | None
    grid: GridKey

    def label(self, board: Board) -> str:
        parts = [f"IPC {self.ipc}"] + [f"{k}={_value(json.loads(v))}" for k, v in self.grid]
        if len(board.students) > 1:
            parts.insert(0, self.student)
        return ", ".join(parts)


def views(board: Board) -> list[View]:
    return _ordered(View(row[0], board.set_info(row[1]).ipc, row[2]) for row in board.rows)


def view_cells(board: Board, view: View, protocol: str, baselines: bool) -> dict[str, Cell]:
    """Set name -> cell, for the sets of the view under the protocol (finished or not)."""
    out = {}
    for row in board.rows:
        info = board.set_info(row[1])
        if (row[0], info.ipc, row[2]) != (view.student, view.ipc, view.grid) or (info.baseline and not baselines):
            continue
        cell = board.cells.get((row, protocol))
        if cell is not None:
            out[row[1]] = cell
    return out


def view_means(board: Board, view: View, protocol: str, baselines: bool) -> dict[str, Cell]:
    """The cells of view_cells that have a mean (at least one finished seed)."""
    return {name: c for name, c in view_cells(board, view, protocol, baselines).items() if c.mean is not None}


def _all_final(*cell_maps: dict[str, Cell]) -> bool:
    """Whether every run of these cells has finished: a set still pending may change any spread or rank."""
    return all(c.final for cells in cell_maps for c in cells.values())


@dataclass(frozen=True)
class Spread:
    view: View
    protocol: str
    value: float | None  # None with fewer than two sets
    best: str | None
    worst: str | None
    sets: int
    final: bool  # every run of the sets it spans has finished


def spread(board: Board, view: View, protocol: str) -> Spread:
    """Best − worst mean top-1 over the non-baseline sets (the RD³ study's measure of how much a protocol
    separates the methods; the random-real baseline is a reference point, not a method)."""
    cells = view_means(board, view, protocol, baselines=False)
    final = _all_final(view_cells(board, view, protocol, baselines=False))
    if len(cells) < 2:
        return Spread(view, protocol, None, None, None, len(cells), final)
    means = {name: c.mean for name, c in cells.items() if c.mean is not None}
    best, worst = max(means, key=means.__getitem__), min(means, key=means.__getitem__)
    return Spread(view, protocol, means[best] - means[worst], best, worst, len(cells), final)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two paired samples (ties in either count as neither concordant nor discordant,
    and shrink the denominator): 1 = same order, −1 = reversed. None with fewer than two pairs or when one
    side is all ties (no order to agree with). Written out (O(n²), n = a handful of sets) rather than
    taken from scipy, which rd3fast does not depend on."""
    if len(x) != len(y):
        raise ValueError("kendall_tau: samples of different lengths")
    concordant = discordant = tied_x = tied_y = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 or dy == 0:
            tied_x += dx == 0
            tied_y += dy == 0
        elif (dx > 0) == (dy > 0):
            concordant += 1
        else:
            discordant += 1
    pairs = len(x) * (len(x) - 1) // 2
    denominator = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return (concordant - discordant) / denominator if denominator else None


@dataclass(frozen=True)
class Agreement:
    view: View
    a: str
    b: str
    tau: float | None
    sets: int
    final: bool


def agreement(board: Board, view: View, a: str, b: str) -> Agreement:
    """Kendall tau-b between the orders two protocols give the sets both have a mean for (the baseline
    included: a method ranked below random is part of the ranking)."""
    ca, cb = view_means(board, view, a, baselines=True), view_means(board, view, b, baselines=True)
    common = [s for s in ca if s in cb]
    tau = kendall_tau([ca[s].mean for s in common], [cb[s].mean for s in common])  # type: ignore[misc]
    final = _all_final(view_cells(board, view, a, baselines=True), view_cells(board, view, b, baselines=True))
    return Agreement(view, a, b, tau, len(common), final)


def own_rows(board: Board, view: View) -> list[tuple[str, Cell | None, dict[str, Cell | None]]]:
    """For the own-vs-rectified view: (set, its own-recipe cell, protocol -> cell) for every other protocol."""
    others = [p for p in board.protocols if p != OWN]
    out = []
    for row in board.rows:
        if (row[0], board.set_info(row[1]).ipc, row[2]) == (view.student, view.ipc, view.grid):
            out.append((row[1], board.cells.get((row, OWN)), {p: board.cells.get((row, p)) for p in others}))
    return out


# ---------------------------------------------------------------------------------------------------
# Throughput
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Throughput:
    device_hours: float
    groups: int  # finished groups (with at least one finished run)
    planned_groups: int
    k_counts: dict[int, int]  # K -> number of finished groups trained K at once
    devices: dict[str, int]  # device -> number of finished groups
    img_per_s: dict[str, float | None]  # protocol -> median img/s of its finished runs
    runs: dict[str, int]  # protocol -> finished ok runs


def throughput(board: Board) -> Throughput:
    """Device time of the finished runs. The K runs of one group trained together on one device, so each
    of their results.json holds the group's wall time: a group is counted once (its longest record)."""
    walls: dict[str, float] = {}
    info: dict[str, tuple[int, str]] = {}
    for run in board.runs:
        if not run.finished:
            continue
        key = run.group_key or run.id
        walls[key] = max(walls.get(key, 0.0), run.wall_s or 0.0)
        info.setdefault(key, (run.k or 1, run.device or "?"))
    speed = {p: [r.images_per_s for r in board.runs if r.protocol == p and r.status == "ok" and r.images_per_s]
             for p in board.protocols}
    return Throughput(device_hours=sum(walls.values()) / 3600, groups=len(walls),
                      planned_groups=len(board.plan.get("groups") or []),
                      k_counts=dict(sorted(Counter(k for k, _ in info.values()).items())),
                      devices=dict(Counter(d for _, d in info.values())),
                      img_per_s={p: (statistics.median(v) if v else None) for p, v in speed.items()},
                      runs={p: len(v) for p, v in speed.items()})


# ---------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------
def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _num(v: float | None, fmt: str = ".1f", none: str = "") -> str:
    return none if v is None else format(v, fmt)


def cell_text(cell: Cell | None, show_preset: bool = False) -> str:
    """``46.3 ± 0.4 (n=3) / best 46.9``, then what is unfinished or failed, the held-out choice, and the
    preset when the column's runs resolve to several (the ``own`` protocol)."""
    if cell is None:
        return "—"
    parts = []
    if cell.mean is not None:
        spread_ = f" ± {cell.std:.1f}" if cell.n > 1 else ""  # one seed has no spread to show
        parts.append(f"{cell.mean:.1f}{spread_} (n={cell.n}) / best {_num(cell.best)}")
    elif cell.final and cell.failed == len(cell.runs):
        parts.append("failed")
    elif cell.done == 0:
        parts.append("pending")
    elif cell.final and not cell.chosen:
        parts.append("no held-out top-1")
    else:
        parts.append(f"{cell.done}/{len(cell.runs)} done")
    if cell.mean is not None and not cell.final:
        parts.append(f"{cell.done}/{len(cell.runs)} done")
    if cell.failed and parts[0] != "failed":
        parts.append(f"{cell.failed} failed")
    if cell.choice:
        chosen = ", ".join(f"{k}={_value(v)}" for k, v in cell.choice.items())
        parts.append(f"{chosen} (held-out {cell.heldout:.1f})")
    if show_preset:
        parts.append(f"[{'/'.join(cell.presets)}]")
    return " · ".join(parts)


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def _row_label(board: Board, row: RowKey) -> list[str]:
    info = board.set_info(row[1])
    name = f"{row[1]} (baseline)" if info.baseline else row[1]
    grid = dict(row[2])
    return [name, info.method, str(info.ipc)] + [_value(json.loads(grid[k])) if k in grid else ""
                                                 for k in board.grid_keys if k not in board.select_keys]


def _protocol_head(board: Board, protocol: str) -> tuple[str, bool]:
    """The column title and whether cells name their preset (a protocol resolving to several presets)."""
    presets = _ordered(r.preset for r in board.runs if r.protocol == protocol)
    if len(presets) == 1 and presets[0] != protocol:
        return f"{protocol} ({presets[0]})", False
    return protocol, len(presets) > 1


def _student_sections(board: Board, student: str) -> list[str]:
    rows = [row for row in board.rows if row[0] == student]
    grid_cols = [k for k in board.grid_keys if k not in board.select_keys]
    heads = [_protocol_head(board, p) for p in board.protocols]
    label_head = ["set", "method", "IPC", *grid_cols]
    out = ["### Top-1 (%)", ""]
    out += _table(label_head + [h for h, _ in heads],
                  ([*_row_label(board, row), *(cell_text(board.cells.get((row, p)), show)
                                               for p, (_, show) in zip(board.protocols, heads))] for row in rows))
    out += ["", "### IOR (top-1 minus the random-real set of the same IPC, same protocol)", ""]
    out += _table(label_head + board.protocols,
                  ([*_row_label(board, row), *(_ior_text(board, row, p) for p in board.protocols)] for row in rows))
    student_views = [v for v in views(board) if v.student == student]
    out += ["", *_spread_section(board, student_views)]
    if OWN in board.protocols and len(board.protocols) > 1:
        out += ["", *_own_section(board, student_views)]
    return out


def _ior_text(board: Board, row: RowKey, protocol: str) -> str:
    if board.set_info(row[1]).baseline:
        return "baseline"
    value = ior(board, row, protocol)
    return "" if value is None else f"{value:+.1f}"


def _mark(final: bool) -> str:
    return "" if final else " *"


def _spread_section(board: Board, vs: list[View]) -> list[str]:
    out = ["### Spread (best − worst non-baseline set) and rank agreement (Kendall τ-b)", ""]
    rows = []
    for v in vs:
        for p in board.protocols:
            s = spread(board, v, p)
            value = "—" if s.value is None else f"{s.value:.1f}{_mark(s.final)}"
            rows.append([v.label(board), p, value, s.best or "", s.worst or "", str(s.sets)])
    out += _table(["view", "protocol", "spread", "best", "worst", "sets"], rows)
    pairs = [agreement(board, v, a, b) for v in vs for a, b in combinations(board.protocols, 2)]
    if pairs:
        out += [""]
        out += _table(["view", "protocol", "protocol", "Kendall τ", "sets"],
                      ([g.view.label(board), g.a, g.b, "—" if g.tau is None else f"{g.tau:+.2f}{_mark(g.final)}",
                        str(g.sets)] for g in pairs))
    note = "Spread: over the non-baseline sets only (random-real is the reference, not a method). "
    if pairs:
        note += ("τ: over the sets both protocols have a mean for, baselines included; 1 = same order, "
                 "−1 = reversed. ")
    return out + ["", note + "`*`: some runs still unfinished, provisional."]


def _own_section(board: Board, vs: list[View]) -> list[str]:
    """Each set's own recipe against every other (rectified) protocol: the gap per set, and the spreads."""
    others = [p for p in board.protocols if p != OWN]
    out = ["### Own recipe vs rectified", ""]
    for v in vs:
        if len(vs) > 1:
            out += [f"{v.label(board)}:", ""]
        rows = []
        for name, own, cells in own_rows(board, v):
            row = [name, "/".join(own.presets) if own else "", _num(own.mean if own else None)]
            for p in others:
                cell = cells[p]
                mean = cell.mean if cell else None
                diff = own.mean - mean if own and own.mean is not None and mean is not None else None
                row += [_num(mean), _num(diff, "+.1f")]
            rows.append(row)
        out += _table(["set", "own preset", OWN, *(c for p in others for c in (p, f"{OWN} − {p}"))], rows)
        own_spread = spread(board, v, OWN)
        for p in others:
            s = spread(board, v, p)
            out += ["", f"Spread ({v.label(board)}): own recipes {_num(own_spread.value, none='—')}"
                        f"{_mark(own_spread.final)} → {p} {_num(s.value, none='—')}{_mark(s.final)} points."]
        out += [""]
    return out[:-1]


def _throughput_section(board: Board) -> list[str]:
    t = throughput(board)
    ks = ", ".join(f"K={k}: {n}" for k, n in t.k_counts.items()) or "none yet"
    devices = ", ".join(f"{d} ×{n}" for d, n in t.devices.items()) or "none yet"
    out = ["## Throughput", "",
           f"Device time of the finished runs: {t.device_hours:.3f} device-hours (each K-at-once group "
           f"counted once). Groups finished: {t.groups} of {t.planned_groups} planned; runs trained at once "
           f"per group: {ks}; devices: {devices}.", ""]
    out += _table(["protocol", "ok runs", "median img/s"],
                  ([p, str(t.runs[p]), _num(t.img_per_s[p], ".0f", "—")] for p in board.protocols))
    return out + ["", "Per run img/s, train and wall time: leaderboard.csv."]


def _failed_section(board: Board) -> list[str]:
    failed = [r for r in board.runs if r.status == "failed"]
    if not failed:
        return []
    lines = [f"- `{r.id}` {r.set} / {r.protocol} / {r.student} seed {r.seed}"
             + "".join(f" {k}={_value(v)}" for k, v in r.grid.items()) + f": {' '.join(str(r.error).split())}"
             for r in failed[:FAILED_LISTED]]
    if len(failed) > FAILED_LISTED:
        lines.append(f"- … and {len(failed) - FAILED_LISTED} more (leaderboard.csv)")
    return ["## Failed runs", "", *lines, "", "`--retry-failed` runs them again."]


def _preamble(board: Board) -> list[str]:
    runs = board.runs
    ok = sum(r.status == "ok" for r in runs)
    failed = sum(r.status == "failed" for r in runs)
    pending = len(runs) - ok - failed
    students = ", ".join(board.students) or "—"
    state = f"{len(runs)} runs: {ok} ok"
    state += f", {failed} failed" if failed else ""
    state += f", {pending} pending or running" if pending else " (complete)"
    out = [f"# Leaderboard: {board.root}", "",
           f"Sweep `{board.plan.get('sweep', '?')}` (plan {board.plan.get('created', '?')}); "
           f"student{'s' if len(board.students) > 1 else ''} {students}; {state}."]
    if board.skipped:
        out.append(f"{board.skipped} plan entries have no run information yet (not counted).")
    out += ["", "Cells: last-epoch test top-1, mean ± std over the finished seeds (n), / best = mean over "
                "seeds of each seed's best evaluation; `k/n done`: runs still pending or running; `failed`: "
                "every run failed; [preset]: what the `own` protocol resolved to."]
    select = board.plan.get("select")
    if board.select_keys and select:
        keys = ", ".join(board.select_keys)
        out.append(f"Held-out selection: {keys} chosen per (set, protocol, student) by the best mean held-out "
                   f"top-1 over seeds, on {select.get('size', '?')} real training images (seed "
                   f"{select.get('seed', '?')}); the test top-1 shown is at that value only (held-out top-1 "
                   "in brackets). The test set chooses nothing.")
    return out


def render_markdown(board: Board) -> str:
    """The whole report as Markdown (what leaderboard.md holds and ``bench report`` prints)."""
    out = _preamble(board)
    for student in board.students:
        out += [""] + ([f"## Student {student}", ""] if len(board.students) > 1 else [])
        out += _student_sections(board, student)
    out += ["", *_throughput_section(board)]
    failed = _failed_section(board)
    if failed:
        out += ["", *failed]
    return "\n".join(out) + "\n"


def format_leaderboard(root: str | Path) -> str:
    """The printed leaderboard of ROOT (RD3Error when ROOT is not a sweep root)."""
    return render_markdown(load(root))


# ---------------------------------------------------------------------------------------------------
# CSV and PNG
# ---------------------------------------------------------------------------------------------------
def csv_header(board: Board) -> list[str]:
    return [*CSV_FIXED, *(f"grid.{k}" for k in board.grid_keys), *CSV_TAIL]


def csv_rows(board: Board) -> list[list[Any]]:
    """One line per planned run, in plan order; ``selected`` says whether a run's grid value is the one
    the held-out selection chose (blank without selection)."""
    chosen = {r.id for c in board.cells.values() for r in c.chosen}
    rows = []
    for r in board.runs:
        selected = ("yes" if r.id in chosen else "no") if board.select_keys else ""
        rows.append([r.id, r.set, r.method, r.ipc, r.baseline, r.protocol, r.preset, r.student,
                     *(_csv_value(r.grid.get(k)) for k in board.grid_keys), r.seed, r.status, selected,
                     r.last_top1, r.best_top1, r.last_heldout_top1, r.images_per_s, r.train_time_s, r.wall_s,
                     r.group_key, r.k, r.device, r.error])
    return [["" if v is None else v for v in row] for row in rows]


def _csv_value(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def write_csv(board: Board, path: Path) -> None:
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(csv_header(board))
            writer.writerows(csv_rows(board))


def plot(board: Board, path: Path) -> None:
    """Grouped bars (set rows × protocols, mean ± std of the last top-1), and the per-protocol spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, protocols = board.rows, board.protocols
    width = 0.8 / max(1, len(protocols))
    fig, (ax_bar, ax_spread) = plt.subplots(2, 1, figsize=(max(8.0, 0.9 * len(rows) * max(1, len(protocols))), 8))
    for i, p in enumerate(protocols):
        xs, means, stds = [], [], []
        for x, row in enumerate(rows):
            cell = board.cells.get((row, p))
            if cell is not None and cell.mean is not None:
                xs.append(x + (i - (len(protocols) - 1) / 2) * width)
                means.append(cell.mean)
                stds.append(cell.std)
        ax_bar.bar(xs, means, width, yerr=stds, capsize=2, color=f"C{i % 10}", label=p)
    ax_bar.set_xticks(range(len(rows)), [_plot_label(board, row) for row in rows], rotation=25, ha="right",
                      fontsize=8)
    ax_bar.set(ylabel="test top-1 (%)", title="last top-1, mean ± std over finished seeds")
    vs = views(board)
    for i, p in enumerate(protocols):
        spreads = [spread(board, v, p).value for v in vs]
        xs = [x + (i - (len(protocols) - 1) / 2) * width for x, s in enumerate(spreads) if s is not None]
        bars = ax_spread.bar(xs, [s for s in spreads if s is not None], width, color=f"C{i % 10}", label=p)
        ax_spread.bar_label(bars, fmt="%.1f", fontsize=7)
    ax_spread.set_xticks(range(len(vs)), [v.label(board) for v in vs], fontsize=8)
    ax_spread.set(ylabel="spread (points)", title="spread: best − worst non-baseline set")
    for ax in (ax_bar, ax_spread):
        if protocols:
            ax.legend(fontsize=7)
    if not any(c.mean is not None for c in board.cells.values()):
        ax_bar.text(0.5, 0.5, "no finished runs yet", transform=ax_bar.transAxes, ha="center")
    fig.tight_layout()
    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)  # format: the temporary name does not end in .png
    finally:
        plt.close(fig)


def _plot_label(board: Board, row: RowKey) -> str:
    parts = [row[1]] + [f"{k}={_value(json.loads(v))}" for k, v in row[2]]
    if len(board.students) > 1:
        parts.append(row[0])
    return "\n".join(parts)


def write_report(root: str | Path) -> dict[str, Path]:
    """Write ROOT/leaderboard.{md,csv,png} (each atomically) from one reading of ROOT; their paths by
    kind ("md", "csv", "png")."""
    board = load(root)
    paths = {kind: board.root / f"leaderboard.{kind}" for kind in ("md", "csv", "png")}
    with atomic_write(paths["md"]) as tmp:
        tmp.write_text(render_markdown(board))
    write_csv(board, paths["csv"])
    plot(board, paths["png"])
    return paths
