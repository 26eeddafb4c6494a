"""DD-Ranking's scores (NUS-HPC-AI-Lab/DD-Ranking; README "DD-Ranking's scores") from a sweep's runs.

Per seed s, with accuracies of the runs that share the seed (a seed fixes a student's initialization and
batch order, so the differences pair):

- HLR_s = Acc(real, hard)_s − Acc(syn, hard)_s            hard-label recovery (lower is better)
- IOR_s = Acc(syn, any)_s − Acc(rdm, any)_s               improvement over random (the table's protocol)
- LRS_s = norm(w IOR_s − (1 − w) HLR_s)                    label-robust score, w = ``lrs_weight``
- ARS_s = norm(γ (Acc(syn, aug) − Acc(rdm, aug))_s + (1 − γ) (Acc(syn, naug) − Acc(rdm, naug))_s)

where norm(x) = 100 (e^x − e^−1) / (e − e^−1) maps x in [−1, 1] to [0, 100] %, with x computed from
accuracies as fractions (DD-Ranking's README and docs/introduction.md: "LRS is normalized to [0, 1]"). Its
released code (``ddranking/metrics/soft_label.py`` ``compute_metrics``, ``aug_robust.py``) applies the same
expression to accuracies in percent and does not multiply by 100, so e^x runs over e^±100: ``units =
"percent"`` reproduces that arithmetic exactly, for comparing numbers with DD-Ranking's output.

A score is the mean over seeds of the per-seed scores, as DD-Ranking averages its ``num_eval`` rounds, with
the sample std and a 95 % percentile bootstrap interval over seeds (``inference.bootstrap_interval``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .board import Board, Cell, RowKey
from .inference import Interval, bootstrap_interval
from .stats import seeds_of
from .sweepfile import HARD, NAUG, REAL


# ---------------------------------------------------------------------------------------------------
# The arithmetic (DD-Ranking's definitions)
# ---------------------------------------------------------------------------------------------------
def normalize(x: float, units: str = "fraction") -> float:
    """DD-Ranking's normalization of alpha (LRS) or beta (ARS): (e^x − e^−1) / (e − e^−1), in percent for
    ``units="fraction"`` (x from accuracies in [0, 1]); for ``"percent"`` its code's value as is."""
    value = (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))
    return 100.0 * value if units == "fraction" else value


def _scale(units: str) -> float:
    """Accuracies are stored in percent; alpha and beta take them as fractions unless ``units="percent"``."""
    return 0.01 if units == "fraction" else 1.0


def lrs(hlr: float, ior: float, weight: float = 0.5, units: str = "fraction") -> float:
    """LRS from HLR and IOR (both in percentage points): norm(w IOR − (1 − w) HLR)."""
    return normalize(_scale(units) * (weight * ior - (1 - weight) * hlr), units)


def ars(aug_gain: float, naug_gain: float, weight: float = 0.5, units: str = "fraction") -> float:
    """ARS from (syn − rdm) with augmentation and without (percentage points): norm(γ aug + (1 − γ) naug)."""
    return normalize(_scale(units) * (weight * aug_gain + (1 - weight) * naug_gain), units)


@dataclass(frozen=True)
class Estimate:
    """A score over seeds: its per-seed values, mean, sample std and bootstrap interval."""

    per_seed: dict[int, float]
    interval: Interval | None

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.per_seed.values())))

    @property
    def std(self) -> float:
        """Sample std (n − 1), as every other leaderboard cell; DD-Ranking's ``*_std`` is np.std (n)."""
        v = list(self.per_seed.values())
        return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0

    @property
    def population_std(self) -> float:
        """np.std over the seeds: DD-Ranking's ``*_std``."""
        return float(np.std(list(self.per_seed.values())))

    @property
    def n(self) -> int:
        return len(self.per_seed)


def estimate(per_seed: Mapping[int, float]) -> Estimate | None:
    """The mean of per-seed scores with its percentile bootstrap interval over seeds (None: no seed)."""
    if not per_seed:
        return None
    values = [float(v) for v in per_seed.values()]
    return Estimate(dict(per_seed), bootstrap_interval([values], lambda m: m[0]))


def per_seed_scores(syn_any: Mapping[int, float], rdm_any: Mapping[int, float],
                    syn_hard: Mapping[int, float] | None = None, real_hard: Mapping[int, float] | float | None = None,
                    syn_naug: Mapping[int, float] | None = None, rdm_naug: Mapping[int, float] | None = None, *,
                    lrs_weight: float = 0.5, ars_weight: float = 0.5,
                    units: str = "fraction") -> dict[str, dict[int, float]]:
    """Seed -> HLR, IOR, LRS, ARS (and the two ARS gains), each over the seeds all its inputs have; accuracies
    in percent. ``real_hard``: per seed, or one known number for every seed. A score whose inputs are missing
    is left out (an empty mapping), never guessed."""
    def at(m: Mapping[int, float] | float | None, s: int) -> float | None:
        if m is None or isinstance(m, (int, float)):
            return None if m is None else float(m)
        return m.get(s)

    out: dict[str, dict[int, float]] = {k: {} for k in ("hlr", "ior", "lrs", "aug_gain", "naug_gain", "ars")}
    for s in sorted(set(syn_any) | set(syn_hard or {}) | set(syn_naug or {})):
        a, r = syn_any.get(s), rdm_any.get(s)
        if a is not None and r is not None:
            out["ior"][s] = out["aug_gain"][s] = a - r
        h, real = at(syn_hard, s), at(real_hard, s)
        if h is not None and real is not None:
            out["hlr"][s] = real - h
        if s in out["ior"] and s in out["hlr"]:
            out["lrs"][s] = lrs(out["hlr"][s], out["ior"][s], lrs_weight, units)
        na, nr = at(syn_naug, s), at(rdm_naug, s)
        if na is not None and nr is not None:
            out["naug_gain"][s] = na - nr
        if s in out["aug_gain"] and s in out["naug_gain"]:
            out["ars"][s] = ars(out["aug_gain"][s], out["naug_gain"][s], ars_weight, units)
    return out


# ---------------------------------------------------------------------------------------------------
# From a sweep's board
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowScores:
    """One (set row, protocol): the scores and the cells they come from."""

    row: RowKey
    protocol: str
    hlr: Estimate | None
    ior: Estimate | None
    lrs: Estimate | None
    ars: Estimate | None
    syn_hard: Cell | None
    syn_naug: Cell | None
    final: bool  # every run the scores read has finished


@dataclass(frozen=True)
class ScoreSettings:
    lrs: bool
    ars: bool
    lrs_weight: float
    ars_weight: float
    protocol: str  # whose recipe the hard-label runs use
    real_hard: float | None
    units: str
    naug: str
    use_aug_for_hard: bool


def settings(board: Board) -> ScoreSettings | None:
    """The plan's [scores] (None when off)."""
    raw = board.plan.get("scores")
    if not isinstance(raw, dict) or not (raw.get("lrs") or raw.get("ars")):
        return None
    return ScoreSettings(bool(raw.get("lrs")), bool(raw.get("ars")), float(raw.get("lrs_weight", 0.5)),
                         float(raw.get("ars_weight", 0.5)), str(raw.get("protocol", "")), raw.get("real_hard"),
                         str(raw.get("units", "fraction")), str(raw.get("naug", "all")),
                         bool(raw.get("use_aug_for_hard", False)))


def real_cell(board: Board, student: str) -> Cell | None:
    """The student's real-hard reference runs (one per seed), if the sweep trains them."""
    for (role, row, _), cell in board.extra_cells.items():
        if role == REAL and row[0] == student:
            return cell
    return None


def _baseline_row(board: Board, row: RowKey) -> RowKey | None:
    info = board.set_info(row[1])
    for name in board.sets:
        other = board.set_info(name)
        if other.baseline and other.ipc == info.ipc:
            return (row[0], name, row[2])
    return None


def row_scores(board: Board, row: RowKey, protocol: str, sc: ScoreSettings) -> RowScores:
    """HLR, IOR, LRS and ARS of one set under one protocol (the baseline's own row included: its IOR is 0 by
    definition, its HLR and LRS a reference point)."""
    base = _baseline_row(board, row)
    cell = board.cells.get((row, protocol))
    rdm = board.cells.get((base, protocol)) if base else None
    hard = board.extra_cells.get((HARD, row, sc.protocol)) if sc.lrs else None
    naug = board.extra_cells.get((NAUG, row, protocol)) if sc.ars else None
    rdm_naug = board.extra_cells.get((NAUG, base, protocol)) if sc.ars and base else None
    real: Mapping[int, float] | float | None = sc.real_hard
    real_c = None
    if sc.lrs and real is None:
        real_c = real_cell(board, row[0])
        real = seeds_of(real_c)
    per = per_seed_scores(seeds_of(cell), seeds_of(rdm), seeds_of(hard) if sc.lrs else None, real,
                          seeds_of(naug) if sc.ars else None, seeds_of(rdm_naug) if sc.ars else None,
                          lrs_weight=sc.lrs_weight, ars_weight=sc.ars_weight, units=sc.units)
    read = [c for c in (cell, rdm, hard, naug, rdm_naug, real_c) if c is not None]
    return RowScores(row, protocol, estimate(per["hlr"]) if sc.lrs else None, estimate(per["ior"]),
                     estimate(per["lrs"]) if sc.lrs else None, estimate(per["ars"]) if sc.ars else None,
                     hard, naug, all(c.final for c in read))


def table(board: Board, sc: ScoreSettings, rows: Sequence[RowKey]) -> dict[tuple[RowKey, str], RowScores]:
    """row_scores for every (row, protocol) of ``rows``."""
    return {(row, p): row_scores(board, row, p, sc) for row in rows for p in board.protocols}
