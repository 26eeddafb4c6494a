"""The leaderboard rendered: Markdown (also printed), CSV (one line per run) and PNG, written atomically into
ROOT so that a reader (or a sweep that reports after every group) never sees half a file.
"""
from __future__ import annotations

import csv
import json
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..atomic import atomic_write
from .board import OWN, Board, Cell, RowKey, load, ordered, value_text
from .inference import Interval
from . import scores
from ..results import save_figure
from .page import html_page
from .stats import (View, agreement, cell_interval, flips, ior, ior_interval, own_rows, rank_samples, ranking, spread,
                    throughput, views)

CSV_FIXED = ("id", "set", "method", "ipc", "baseline", "protocol", "role", "preset", "student")


CSV_TAIL = ("seed", "status", "selected", "last_top1", "best_top1", "last_heldout_top1", "images_per_s",
            "train_time_s", "wall_s", "group_key", "k", "device", "error")


FAILED_LISTED = 20  # failed runs named in the Markdown; all of them are in the CSV


SEEDS_SHOWN = 1000  # seeds needed above this are shown as "> 1,000": a difference too small to chase


def _num(v: float | None, fmt: str = ".1f", none: str = "") -> str:
    return none if v is None else format(v, fmt)


def cell_text(cell: Cell | None, show_preset: bool = False) -> str:
    """``46.3 ± 0.4 [45.3, 47.3] (n=3) / best 46.9`` (mean ± std over seeds, its 95 % Student-t interval),
    then what is unfinished or failed, the held-out choice, and the preset when the column's runs resolve to
    several (the ``own`` protocol)."""
    if cell is None:
        return "—"
    parts = []
    if cell.mean is not None:
        spread_ = f" ± {cell.std:.1f}{interval_text(cell_interval(cell))}" if cell.n > 1 else ""  # one seed: none
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
        chosen = ", ".join(f"{k}={value_text(v)}" for k, v in cell.choice.items())
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
    return [name, info.method, str(info.ipc)] + [value_text(json.loads(grid[k])) if k in grid else ""
                                                 for k in board.grid_keys if k not in board.select_keys]


def _protocol_head(board: Board, protocol: str) -> tuple[str, bool]:
    """The column title and whether cells name their preset (a protocol resolving to several presets)."""
    presets = ordered(r.preset for r in board.runs if r.protocol == protocol)
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
    out += ["", *_rank_section(board, student_views)]
    if OWN in board.protocols and len(board.protocols) > 1:
        out += ["", *_own_section(board, student_views)]
    sc = scores.settings(board)
    if sc is not None:
        out += ["", *_scores_section(board, student, rows, sc)]
    return out


def estimate_text(e: scores.Estimate | None, fmt: str = ".1f", final: bool = True) -> str:
    """``41.2 ± 1.3 [39.9, 42.5] (n=3)``: mean ± sample std over seeds, its bootstrap interval; ``*``: provisional."""
    if e is None:
        return "—"
    spread_ = f" ± {e.std:{fmt.lstrip('+')}}{interval_text(e.interval, fmt)}" if e.n > 1 else ""
    return f"{e.mean:{fmt}}{spread_} (n={e.n}){_mark(final)}"


def _score_ranks(board: Board, student: str, rows: list[RowKey], t: dict[tuple[RowKey, str], scores.RowScores],
                 sc: scores.ScoreSettings) -> list[list[str]]:
    """Per view, score and protocol: the sets ordered by the score, with rank-group letters (``rank_samples``)."""
    out = []
    for v in (v for v in views(board) if v.student == student):
        members = [row for row in rows if (board.set_info(row[1]).ipc, row[2]) == (v.ipc, v.grid)]
        for name in [n for n, on in (("lrs", sc.lrs), ("ars", sc.ars)) if on]:
            for p in board.protocols:
                samples = {row[1]: e.per_seed for row in members if (e := getattr(t[(row, p)], name)) is not None}
                if len(samples) < 2:
                    continue
                order, letters, _ = rank_samples(samples)
                means = {n: sum(samples[n].values()) / len(samples[n]) for n in order}
                out.append([v.label(board), name.upper(), p,
                            " > ".join(f"{n} {means[n]:.2f} ({letters[n]})" for n in order)])
    return out


def _scores_section(board: Board, student: str, rows: list[RowKey], sc: scores.ScoreSettings) -> list[str]:
    """DD-Ranking's scores: the hard-label and no-augmentation accuracies they read, then HLR, LRS and ARS."""
    t = scores.table(board, sc, rows)
    label_head = ["set", "method", "IPC", *(k for k in board.grid_keys if k not in board.select_keys)]
    units = "" if sc.units == "fraction" else " (units = percent: DD-Ranking's released arithmetic, not in %)"
    out = ["### DD-Ranking's scores", ""]
    if sc.lrs:
        if sc.real_hard is not None:
            real = f"{sc.real_hard:.1f} (given in the sweep)"
        else:
            real = cell_text(scores.real_cell(board, student))
        hard_aug = "kept" if sc.use_aug_for_hard else "off"
        out += [f"Real-hard reference (the student on the whole real training split, hard labels): {real}.", "",
                f"Hard-label runs: protocol {sc.protocol}'s recipe with cross-entropy on hard labels, no teacher, "
                f"mixing augmentation {hard_aug}. HLR = real-hard − syn-hard (lower is better).", ""]
        out += _table(label_head + ["syn-hard top-1", "HLR"],
                      ([*_row_label(board, row), cell_text(t[(row, sc.protocol)].syn_hard),
                        estimate_text(t[(row, sc.protocol)].hlr, "+.1f", t[(row, sc.protocol)].final)] for row in rows))
        out += ["", f"LRS = norm({sc.lrs_weight:g} IOR − {1 - sc.lrs_weight:g} HLR), IOR under each protocol{units}:",
                ""]
        out += _table(label_head + list(board.protocols),
                      ([*_row_label(board, row), *(estimate_text(t[(row, p)].lrs, ".2f", t[(row, p)].final)
                                                   for p in board.protocols)] for row in rows))
    if sc.ars:
        what = "every augmentation off" if sc.naug == "all" else "CutMix/Mixup/DSA off, crops and flips kept"
        out += ["" if sc.lrs else "", f"No-augmentation runs (each protocol's recipe, {what}): top-1.", ""]
        out += _table(label_head + list(board.protocols),
                      ([*_row_label(board, row), *(cell_text(t[(row, p)].syn_naug) for p in board.protocols)]
                       for row in rows))
        out += ["", f"ARS = norm({sc.ars_weight:g} (syn − rdm with augmentation) + {1 - sc.ars_weight:g} (syn − rdm "
                f"without)){units}:", ""]
        out += _table(label_head + list(board.protocols),
                      ([*_row_label(board, row), *(estimate_text(t[(row, p)].ars, ".2f", t[(row, p)].final)
                                                   for p in board.protocols)] for row in rows))
    ranked = _score_ranks(board, student, rows, t, sc)
    if ranked:
        out += ["", "Rank groups by score (sets sharing a letter are not separated: paired t-tests over seeds, "
                    "Holm-corrected at 5 %):", ""]
        out += _table(["view", "score", "protocol", "order (best first)"], ranked)
    out += ["", "norm(x) = 100 (e^x − e^−1) / (e − e^−1) with x from accuracies as fractions: a score lies in "
                "[0, 100], and x = 0 (no gain over random real images, no hard-label gap) is 26.9. Scores are computed "
                "per seed from runs that share it, then averaged: mean ± std over seeds, 95 % bootstrap interval; "
                "`*`: runs still unfinished."]
    return out


def interval_text(iv: Interval | None, fmt: str = ".1f") -> str:
    """`` [lo, hi]`` (the 95 % interval), or nothing when there is none (one seed)."""
    if iv is None or iv.lo is None or iv.hi is None:
        return ""
    return f" [{iv.lo:{fmt}}, {iv.hi:{fmt}}]"


def _ior_text(board: Board, row: RowKey, protocol: str) -> str:
    if board.set_info(row[1]).baseline:
        return "baseline"
    value = ior(board, row, protocol)
    return "" if value is None else f"{value:+.1f}{interval_text(ior_interval(board, row, protocol), '+.1f')}"


def _mark(final: bool) -> str:
    return "" if final else " *"


def _spread_section(board: Board, vs: list[View]) -> list[str]:
    out = ["### Spread (best − worst non-baseline set) and rank agreement (Kendall τ-b)", ""]
    rows = []
    for v in vs:
        for p in board.protocols:
            s = spread(board, v, p)
            value = "—" if s.value is None else f"{s.value:.1f}{interval_text(s.interval)}{_mark(s.final)}"
            rows.append([v.label(board), p, value, s.best or "", s.worst or "", str(s.sets)])
    out += _table(["view", "protocol", "spread", "best", "worst", "sets"], rows)
    pairs = [agreement(board, v, a, b) for v in vs for a, b in combinations(board.protocols, 2)]
    if pairs:
        out += [""]
        out += _table(["view", "protocol", "protocol", "Kendall τ", "sets"],
                      ([g.view.label(board), g.a, g.b, "—" if g.tau is None
                        else f"{g.tau:+.2f}{interval_text(g.interval, '+.2f')}{_mark(g.final)}", str(g.sets)]
                       for g in pairs))
    note = ("Spread: over the non-baseline sets only (random-real is the reference, not a method); "
            "[95 % interval]: bootstrap over each set's seeds. ")
    if pairs:
        note += ("τ: over the sets both protocols have a mean for, baselines included; 1 = same order, "
                 "−1 = reversed. ")
    return out + ["", note + "`*`: some runs still unfinished, provisional."]


def _rank_section(board: Board, vs: list[View]) -> list[str]:
    """Per view and protocol: the sets by mean with their rank groups (a shared letter: not separated by a
    paired test over shared seeds, Holm-corrected over the pairs), and for each unseparated pair the seeds
    per method a difference of that size would need (power 0.8, alpha 0.05)."""
    out = ["### Rank groups (sets sharing a letter are not separated at 5 %, Holm-corrected)", ""]
    rows, needs = [], []
    for v in vs:
        for p in board.protocols:
            r = ranking(board, v, p)
            if len(r.order) < 2:
                continue
            for name in r.order:
                cell = board.cells.get(((v.student, name, v.grid), p))
                iv = cell_interval(cell)
                rows.append([v.label(board), p, r.letters[name], name,
                             f"{iv.value:.1f}{interval_text(iv)}" if iv else "—"])
            for q in r.pairs:
                if not q.separated:
                    need = "—" if q.seeds_needed is None else (
                        f"> {SEEDS_SHOWN:,} (no practical difference)" if q.seeds_needed > SEEDS_SHOWN
                        else str(q.seeds_needed))
                    needs.append([v.label(board), p, f"{q.better} − {q.worse}",
                                  f"{q.difference.value:+.1f}{interval_text(q.difference, '+.1f')}",
                                  "—" if q.p is None else f"{q.p:.3f}", need])
    if not rows:
        return out + ["(fewer than two sets with results per protocol)"]
    out += _table(["view", "protocol", "group", "set", "top-1 [95 % interval]"], rows)
    if needs:
        out += ["", "Pairs not separated, and the seeds per method that would separate a difference of that size "
                "(paired t-test, power 0.8):", ""]
        out += _table(["view", "protocol", "pair", "difference [95 % interval]", "p", "seeds needed"], needs)
    return out


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
            total, flipped, significant = flips(board, v, OWN, p)
            out += ["", f"Spread ({v.label(board)}): own recipes {_num(own_spread.value, none='—')}"
                        f"{interval_text(own_spread.interval)}{_mark(own_spread.final)} → {p} "
                        f"{_num(s.value, none='—')}{interval_text(s.interval)}{_mark(s.final)} points. Pairwise "
                        f"orders that flip between own and {p}: {flipped} of {total}, {significant} of them "
                        "separated under both."]
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
    failed = [r for r in board.runs + board.extra if r.status == "failed"]
    if not failed:
        return []
    lines = [f"- `{r.id}` {r.set} / {r.protocol}{'/' + r.role if r.role not in ('', r.protocol) else ''} / "
             f"{r.student} seed {r.seed}"
             + "".join(f" {k}={value_text(v)}" for k, v in r.grid.items()) + f": {' '.join(str(r.error).split())}"
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
    if board.extra:  # the runs [scores] adds
        done = sum(r.status == "ok" for r in board.extra)
        bad = sum(r.status == "failed" for r in board.extra)
        state += f"; {len(board.extra)} runs for the scores: {done} ok" + (f", {bad} failed" if bad else "")
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
    """One line per planned run, the table's then those [scores] adds (``role``); ``selected`` says whether a
    run's grid value is the one the held-out selection chose (blank without selection)."""
    chosen = {r.id for c in board.cells.values() for r in c.chosen}
    rows = []
    chosen |= {r.id for c in board.extra_cells.values() for r in c.chosen}
    for r in board.runs + board.extra:
        selected = ("yes" if r.id in chosen else "no") if board.select_keys and r.role != scores.REAL else ""
        rows.append([r.id, r.set, r.method, r.ipc, r.baseline, r.protocol, r.role, r.preset, r.student,
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
    """Per protocol, each set's mean last top-1 as a point with its 95 % interval bar, on an axis that spans
    the values (not from zero: a 1.5-point difference must be visible); below it, when there is an ``own``
    protocol, one line per set from its own recipe to each rectified protocol, else the per-protocol spread
    with its bootstrap interval. A panel with nothing to show is left out, not drawn empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, protocols = board.rows, board.protocols
    vs = views(board)
    own = OWN in protocols and len(protocols) > 1
    spreads = {(v, p): spread(board, v, p) for v in vs for p in protocols}
    second = own or any(sp.value is not None for sp in spreads.values())
    sc = scores.settings(board)
    score_table = scores.table(board, sc, rows) if sc is not None else {}
    third = any(e is not None for rs in score_table.values() for e in (rs.lrs, rs.ars))
    panels = 1 + second + third
    fig, axes = plt.subplots(panels, 1, squeeze=False,
                             figsize=(max(8.0, 0.9 * len(rows) * max(1, len(protocols))), 4 * panels + 0.5))
    ax = axes[0][0]
    for i, p in enumerate(protocols):
        points = [(x, iv.value, iv) for x, row in enumerate(rows)
                  if (iv := cell_interval(board.cells.get((row, p)))) is not None]
        _points(ax, points, i, len(protocols), fmt="o", color=f"C{i % 10}", label=p)
    ax.set_xticks(range(len(rows)), [_plot_label(board, row) for row in rows], rotation=25, ha="right", fontsize=8)
    ax.set(ylabel="test top-1 (%)", title="last top-1: mean and 95 % interval over finished seeds")
    ax.grid(axis="y", alpha=0.3)
    if any(c.mean is not None for c in board.cells.values()):
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no finished runs yet", transform=ax.transAxes, ha="center")
    if second:
        ax2 = axes[1][0]
        if own:
            _plot_own(board, vs, ax2)
        else:
            for i, p in enumerate(protocols):
                points = [(x, sp.value, sp.interval) for x, v in enumerate(vs)
                          if (sp := spreads[(v, p)]).value is not None]
                _points(ax2, points, i, len(protocols), fmt="s", color=f"C{i % 10}", label=p)
            ax2.set_xticks(range(len(vs)), [v.label(board) for v in vs], fontsize=8)
            ax2.set(ylabel="spread (points)", title="spread: best − worst non-baseline set, 95 % bootstrap interval")
            ax2.legend(fontsize=7)
            ax2.grid(axis="y", alpha=0.3)
    if third:
        _plot_scores(board, rows, score_table, axes[panels - 1][0])
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _points(ax: Any, points: list[tuple[int, float, Interval | None]], i: int, n: int, **style: Any) -> None:
    """Series ``i`` of ``n`` side by side around each x: a point per value with its interval bar (none where
    the interval is unknown)."""
    if not points:
        return
    shift = (i - (n - 1) / 2) * 0.6 / max(1, n)
    lo = [v - iv.lo if iv is not None and iv.lo is not None else 0.0 for _, v, iv in points]
    hi = [iv.hi - v if iv is not None and iv.hi is not None else 0.0 for _, v, iv in points]
    ax.errorbar([x + shift for x, _, _ in points], [v for _, v, _ in points], yerr=[lo, hi], capsize=3, **style)


def _plot_own(board: Board, vs: list[View], ax: Any) -> None:
    """One line per set (one colour each): its mean under its own recipe, then under each other protocol."""
    columns = [OWN] + [p for p in board.protocols if p != OWN]
    drawn = 0
    for v in vs:
        for name, own_cell, cells in own_rows(board, v):
            ys = [own_cell.mean if own_cell else None] + [cells[p].mean if cells[p] else None for p in columns[1:]]
            pts = [(x, y) for x, y in enumerate(ys) if y is not None]
            if len(pts) < 1:
                continue
            label = name if len(vs) == 1 else f"{name} ({v.label(board)})"
            ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", color=f"C{drawn % 10}", label=label)
            drawn += 1
    ax.set_xticks(range(len(columns)), ["own recipe" if c == OWN else c for c in columns], fontsize=8)
    ax.set(ylabel="test top-1 (%)", title="each set under its own recipe and under the rectified protocol(s)")
    ax.grid(axis="y", alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)


def _plot_scores(board: Board, rows: list[RowKey], table: dict[tuple[RowKey, str], scores.RowScores],
                 ax: Any) -> None:
    """LRS (circles) and ARS (squares) of each set under each protocol, with their bootstrap intervals."""
    series = [(name, p) for name in ("lrs", "ars") for p in board.protocols
              if any(getattr(table[(row, p)], name) is not None for row in rows)]
    for i, (name, p) in enumerate(series):
        points = [(x, e.mean, e.interval) for x, row in enumerate(rows)
                  if (e := getattr(table[(row, p)], name)) is not None]
        _points(ax, points, i, len(series), fmt="o" if name == "lrs" else "s",
                color=f"C{board.protocols.index(p) % 10}", label=f"{name.upper()} · {p}")
    ax.set_xticks(range(len(rows)), [_plot_label(board, row) for row in rows], rotation=25, ha="right", fontsize=8)
    ax.set(ylabel="score (0-100)", title="DD-Ranking's scores: mean over seeds and 95 % bootstrap interval")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)


def _plot_label(board: Board, row: RowKey) -> str:
    parts = [row[1]] + [f"{k}={value_text(json.loads(v))}" for k, v in row[2]]
    if len(board.students) > 1:
        parts.append(row[0])
    return "\n".join(parts)


def write_report(root: str | Path) -> dict[str, Path]:
    """Write ROOT/leaderboard.{md,csv,png,html} (each atomically) from one reading of ROOT; their paths by
    kind ("md", "csv", "png", "html"). The HTML page embeds the figure and needs no network to view."""
    board = load(root)
    paths = {kind: board.root / f"leaderboard.{kind}" for kind in ("md", "csv", "png", "html")}
    markdown = render_markdown(board)
    with atomic_write(paths["md"]) as tmp:
        tmp.write_text(markdown)
    write_csv(board, paths["csv"])
    plot(board, paths["png"])
    with atomic_write(paths["html"]) as tmp:
        tmp.write_text(html_page(markdown, paths["png"].read_bytes(), title=f"rd3fast leaderboard: {board.root.name}"))
    return paths
