"""The leaderboard's statistics over a Board's cells: IOR against the random-real baseline, per-protocol
spread, rank agreement (Kendall tau-b) between protocols, the own-vs-rectified rows, and throughput.
"""
from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

from .board import OWN, Board, Cell, GridKey, RowKey, ordered, value_text


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
        parts = [f"IPC {self.ipc}"] + [f"{k}={value_text(json.loads(v))}" for k, v in self.grid]
        if len(board.students) > 1:
            parts.insert(0, self.student)
        return ", ".join(parts)


def views(board: Board) -> list[View]:
    return ordered(View(row[0], board.set_info(row[1]).ipc, row[2]) for row in board.rows)


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
