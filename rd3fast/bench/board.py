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

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Iterable, Sequence, TypeVar

from ..errors import RD3Error
from ..results import mean_std

H = TypeVar("H", bound=Hashable)
OWN = "own"  # the protocol name that means "each set's method's own preset"
GridKey = tuple[tuple[str, str], ...]  # ((key, json of value), ...): hashable grid values
RowKey = tuple[str, str, GridKey]  # (student, set name, the grid values that are not selected)


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
    role: str = ""  # "": a cell of the tables; "hard" / "naug" / "real": a run the [scores] need (scores.py)
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
    # The runs [scores] adds (plan "scores"), apart from the tables' runs, and their cells keyed by
    # (role, row, protocol); the real-hard reference's row is (student, its set name, ()).
    extra: list[Run] = field(default_factory=list)
    extra_cells: dict[tuple[str, RowKey, str], Cell] = field(default_factory=dict)

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
    extra = [r for r in runs if r.role]
    runs = [r for r in runs if not r.role]
    grid_keys = ordered(k for r in runs for k in r.grid)
    select = plan.get("select") or None
    select_keys = [k for k in (select.get("keys") or grid_keys) if k in grid_keys] if select else []
    board = Board(root=root, plan=plan, runs=runs, skipped=skipped, extra=extra,
                  sets=ordered([*(plan.get("sets") or []), *(r.set for r in runs)]),
                  protocols=ordered([*(plan.get("protocols") or []), *(r.protocol for r in runs)]),
                  students=ordered(r.student for r in runs), grid_keys=grid_keys, select_keys=select_keys)
    board.sets = [s for s in board.sets if any(r.set == s for r in runs)]
    board.protocols = [p for p in board.protocols if any(r.protocol == p for r in runs)]
    _fill_cells(board)
    return board


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RD3Error(f"{path}: unreadable JSON ({e})") from None


def ordered(items: Iterable[H]) -> list[H]:
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
                  seed=info.get("seed"), grid=dict(info.get("grid") or {}), role=str(info.get("role") or ""))
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
        return ordered(r.preset for r in self.runs)


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
    rows = ordered(row for row, _ in groups)
    order = {s: i for i, s in enumerate(board.sets)}
    board.rows = sorted(rows, key=lambda row: (board.students.index(row[0]), order[row[1]]))  # stable: grid order
    board.cells = {key: _select(runs, board.select_keys) for key, runs in groups.items()}
    extra: dict[tuple[str, RowKey, str], list[Run]] = {}
    for run in board.extra:
        row = (run.student, run.set, grid_key(run.grid, row_keys))
        extra.setdefault((run.role, row, run.protocol), []).append(run)
    board.extra_cells = {key: _select(runs, board.select_keys) for key, runs in extra.items()}


def _select(runs: list[Run], keys: Sequence[str]) -> Cell:
    """Without selection keys, every run counts. With them, the grid value with the best mean held-out
    top-1 over its finished seeds (the first in grid order on a tie); the test top-1 is reported there only.
    While runs are pending the choice is provisional (the cell says how many are done)."""
    if not keys or not any(k in r.grid for r in runs for k in keys):  # nothing to choose (the real-hard runs)
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
# Markdown
# ---------------------------------------------------------------------------------------------------
def value_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
