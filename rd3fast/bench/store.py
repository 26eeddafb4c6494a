"""What ROOT holds: plan.json, runs/<id>/run.json and results.json, groups/<key>/ (README
"Identity, ROOT and what a rerun does"). Everything here is written atomically and only when it changed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..atomic import atomic_write
from ..results import write_json
from .plan import Plan, RunSpec, distinct

GROUPS, RUNS = "groups", "runs"  # ROOT's sub-folders


RESULTS, RUN_INFO, PLAN = "results.json", "run.json", "plan.json"


# ---------------------------------------------------------------------------------------------------
# What ROOT holds
# ---------------------------------------------------------------------------------------------------
def run_dir(root: str | Path, rid: str) -> Path:
    return Path(root) / RUNS / rid


def read_result(root: str | Path, rid: str) -> dict[str, Any] | None:
    """A run's results.json, or None when it has none (unfinished). An unreadable one counts as none: it
    is rewritten when the run is retrained (results are written atomically, so this means a hand edit)."""
    path = run_dir(root, rid) / RESULTS
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("status") in ("ok", "failed") else None


def status(root: str | Path, rid: str) -> str:
    """finished | failed | pending (no results.json: not started, running, or interrupted)."""
    rec = read_result(root, rid)
    return "pending" if rec is None else "finished" if rec["status"] == "ok" else "failed"


def to_train(root: str | Path, runs: Iterable[RunSpec], retry_failed: bool = False) -> list[RunSpec]:
    """The runs that still need training: pending ones, and failed ones with ``retry_failed``."""
    wanted = ("pending", "failed") if retry_failed else ("pending",)
    return [r for r in runs if status(root, r.id) in wanted]


def write_plan(root: str | Path, plan: Plan) -> None:
    """ROOT/plan.json and every run's run.json (rewritten only when it changed), before any training."""
    root = Path(root)
    _write_json_if_changed(root / PLAN, plan.to_json(), ignore=("created",))
    for r in distinct(plan.runs):
        _write_json_if_changed(run_dir(root, r.id) / RUN_INFO, r.info())


def _write_json_if_changed(path: Path, obj: dict[str, Any], ignore: Sequence[str] = ()) -> None:
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    strip = lambda d: {k: v for k, v in d.items() if k not in ignore}  # noqa: E731
    if not isinstance(old, dict) or strip(old) != strip(json.loads(json.dumps(obj))):
        write_json(path, obj)


def write_text_if_changed(path: str | Path, text: str) -> bool:
    """Write ``path`` atomically unless it already holds ``text`` (its mtime then stays); True if written."""
    p = Path(path)
    try:
        if p.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: (re)write it below
    with atomic_write(p) as tmp:
        tmp.write_text(text)
    return True
