"""The leaderboard's statistics over a Board's cells: IOR against the random-real baseline, per-protocol
spread, rank agreement (Kendall tau-b) between protocols, rank groups that admit ties, the own-vs-rectified
rows, and throughput. Each estimate carries a 95 % interval (``inference``: Student-t over seeds, paired
where runs share seeds, bootstrap over seeds for the spread and tau).
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

from .board import OWN, Board, Cell, GridKey, RowKey, ordered, value_text
from .inference import (Interval, bootstrap_interval, difference_interval, difference_pvalue, holm, kendall_tau_b,
                        mean_interval, rank_groups, seeds_needed)


# ---------------------------------------------------------------------------------------------------
# IOR, spread, rank agreement
# ---------------------------------------------------------------------------------------------------
def ior(board: Board, row: RowKey, protocol: str) -> float | None:
    """Mean top-1 minus the random-real baseline's of the same IPC, protocol, student and grid point
    (DD-Ranking's IOR); None for a baseline row, or when either mean is missing."""
    cell, base = board.cells.get((row, protocol)), _baseline_cell(board, row, protocol)
    if cell is None or cell.mean is None or base is None:
        return None
    return cell.mean - base.mean  # type: ignore[operator]


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
    interval: Interval | None = None  # bootstrap over each set's seeds


def spread(board: Board, view: View, protocol: str) -> Spread:
    """Best − worst mean top-1 over the non-baseline sets (the RD³ study's measure of how much a protocol
    separates the methods; the random-real baseline is a reference point, not a method)."""
    cells = view_means(board, view, protocol, baselines=False)
    final = _all_final(view_cells(board, view, protocol, baselines=False))
    if len(cells) < 2:
        return Spread(view, protocol, None, None, None, len(cells), final)
    means = {name: c.mean for name, c in cells.items() if c.mean is not None}
    best, worst = max(means, key=means.__getitem__), min(means, key=means.__getitem__)
    interval = bootstrap_interval([list(seeds_of(c).values()) for c in cells.values()], lambda m: max(m) - min(m))
    return Spread(view, protocol, means[best] - means[worst], best, worst, len(cells), final, interval)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two paired samples (scipy's; ties count as neither concordant nor discordant and
    shrink the denominator): 1 = same order, −1 = reversed. None with fewer than two pairs or when one side
    is all ties (no order to agree with)."""
    return kendall_tau_b(x, y)


def seeds_of(cell: Cell | None) -> dict[int, float]:
    """Seed -> last top-1 of a cell's finished runs."""
    return {} if cell is None else {int(r.seed or 0): float(r.last_top1) for r in cell.ok
                                    if r.last_top1 is not None}


def cell_interval(cell: Cell | None) -> Interval | None:
    """The cell's mean top-1 with its Student-t interval over seeds (no interval with one seed)."""
    values = list(seeds_of(cell).values())
    return mean_interval(values) if values else None


def ior_interval(board: Board, row: RowKey, protocol: str) -> Interval | None:
    """IOR with its interval: paired over the seeds the set and its baseline share (Welch's otherwise)."""
    base = _baseline_cell(board, row, protocol)
    cell = board.cells.get((row, protocol))
    if base is None or cell is None or cell.mean is None or base.mean is None:
        return None
    return difference_interval(seeds_of(cell), seeds_of(base))


def _baseline_cell(board: Board, row: RowKey, protocol: str) -> Cell | None:
    info = board.set_info(row[1])
    if info.baseline:
        return None
    for name in board.sets:
        other = board.set_info(name)
        if other.baseline and other.ipc == info.ipc:
            base = board.cells.get(((row[0], name, row[2]), protocol))
            if base is not None and base.mean is not None:
                return base
    return None


@dataclass(frozen=True)
class Agreement:
    view: View
    a: str
    b: str
    tau: float | None
    sets: int
    final: bool
    interval: Interval | None = None  # bootstrap over each cell's seeds


def agreement(board: Board, view: View, a: str, b: str) -> Agreement:
    """Kendall tau-b between the orders two protocols give the sets both have a mean for (the baseline
    included: a method ranked below random is part of the ranking)."""
    ca, cb = view_means(board, view, a, baselines=True), view_means(board, view, b, baselines=True)
    common = [s for s in ca if s in cb]
    tau = kendall_tau([ca[s].mean for s in common], [cb[s].mean for s in common])  # type: ignore[misc]
    final = _all_final(view_cells(board, view, a, baselines=True), view_cells(board, view, b, baselines=True))
    samples = [list(seeds_of(ca[s]).values()) for s in common] + [list(seeds_of(cb[s]).values()) for s in common]
    k = len(common)
    interval = bootstrap_interval(samples, lambda m: kendall_tau(m[:k], m[k:])) if tau is not None else None
    return Agreement(view, a, b, tau, len(common), final, interval)


@dataclass(frozen=True)
class Pair:
    """Two sets under one protocol: their difference with its interval, the Holm-corrected verdict, and
    for an unseparated pair the seeds a difference of that size would need."""

    better: str
    worse: str
    difference: Interval
    p: float | None
    separated: bool
    seeds_needed: int | None


@dataclass(frozen=True)
class Ranking:
    view: View
    protocol: str
    order: list[str]  # best mean first
    letters: dict[str, str]  # rank groups: sets sharing a letter are not separated
    pairs: list[Pair]


def ranking(board: Board, view: View, protocol: str) -> Ranking:
    """Sets (baseline included) ranked by mean top-1 (``rank_samples``) under one protocol of a view."""
    cells = view_means(board, view, protocol, baselines=True)
    order, letters, pairs = rank_samples({name: seeds_of(c) for name, c in cells.items()})
    return Ranking(view, protocol, order, letters, pairs)


def rank_samples(samples: dict[str, dict[int, float]]) -> tuple[list[str], dict[str, str], list[Pair]]:
    """Names ranked by the mean of their per-seed values (best first); every pair tested (paired t over
    shared seeds, Welch's otherwise), Holm-corrected over the pairs; rank-group letters from the verdicts.
    For top-1 cells (``ranking``) and for per-seed scores (``scores``) alike."""
    means = {n: statistics.fmean(v.values()) for n, v in samples.items() if v}
    order = sorted(means, key=lambda n: -means[n])
    tested = [(a, b, difference_pvalue(samples[a], samples[b])) for a, b in combinations(order, 2)]
    verdicts = iter(holm([p for _, _, p in tested if p is not None]))
    pairs = []
    for a, b, p in tested:
        sep = next(verdicts) if p is not None else False
        sa, sb = samples[a], samples[b]
        pairs.append(Pair(a, b, difference_interval(sa, sb), p, sep, None if sep else seeds_needed(sa, sb)))
    separated = {frozenset((q.better, q.worse)) for q in pairs if q.separated}
    return order, rank_groups(order, lambda x, y: frozenset((x, y)) in separated), pairs


def flips(board: Board, view: View, a: str, b: str) -> tuple[int, int, int]:
    """(pairs ordered by both protocols, pairs whose order flips, flips separated in both protocols)."""
    ra, rb = ranking(board, view, a), ranking(board, view, b)
    pos_a, pos_b = {n: i for i, n in enumerate(ra.order)}, {n: i for i, n in enumerate(rb.order)}
    sep_a = {frozenset((q.better, q.worse)) for q in ra.pairs if q.separated}
    sep_b = {frozenset((q.better, q.worse)) for q in rb.pairs if q.separated}
    common = [n for n in ra.order if n in pos_b]
    total = flipped = significant = 0
    for x, y in combinations(common, 2):
        total += 1
        if (pos_a[x] < pos_a[y]) != (pos_b[x] < pos_b[y]):
            flipped += 1
            significant += frozenset((x, y)) in sep_a and frozenset((x, y)) in sep_b
    return total, flipped, significant


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
    for run in board.runs + board.extra:  # the runs [scores] adds took device time too
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
