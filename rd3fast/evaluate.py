"""The evaluation API: train students on distilled sets under a protocol and record the results.

``evaluate_distilled`` evaluates one set, ``evaluate_sets`` several sets of one size at once (their runs
side by side, sharing each teacher pass); both write ``<out>/results.json`` + ``curves.png`` and return
the records that ``table_row`` turns into table rows. The CLI (``run``) and the demo (``demo``) are thin
callers of this module, so neither needs the other.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from .config import Config, describe
from .engine.checkpoint import Checkpointing, StopRequest
from .errors import RD3Error
from .lock import OutputLock
from .results import aggregate, environment, plot_curves, write_json

CHECKPOINTS = ".checkpoints"  # per output folder: one checkpoint file per group of runs in progress


RESUME_FREE = ("seeds", "parallel_seeds")  # config keys that may change between an attempt and its resume


def evaluate_distilled(cfg: Config, out: str | Path | None, name: str = "", progress: bool = True,
                       verbose: bool = True, **resume: Any) -> dict[str, Any]:
    """Train cfg.seeds students on cfg.distilled, write <out>/results.json + curves.png, return the record.
    ``resume``: ``evaluate_sets``' restart / checkpoint_every / stop."""
    name = name or Path(cfg.distilled or "set").name
    [record] = evaluate_sets(cfg, {name: cfg.distilled}, None if out is None else {name: Path(out)},
                             progress=progress, verbose=verbose, **resume)
    return record


def evaluate_sets(cfg: Config, sets: dict[str, str | None], outs: dict[str, Path] | None = None,
                  progress: bool = True, verbose: bool = True, restart: bool = False, checkpoint_every: int = 0,
                  stop: StopRequest | None = None) -> list[dict[str, Any]]:
    """Evaluate several distilled sets of one size under one protocol (cfg.distilled is ignored): every
    (set, seed) run, cfg.parallel_seeds of them at a time side by side, sharing the teacher pass. Writes
    outs[name]/results.json (after every group of runs) and curves.png; returns one record per set.

    With ``outs``, nothing is lost: each output folder is locked for the run; runs already in an
    existing results.json of the same config are kept, not recomputed (a results.json of another config
    is refused, naming the keys that differ, unless ``restart``); an interrupted group resumes from its
    checkpoint (``<out>/.checkpoints/``, every ``checkpoint_every`` epochs, 0 = automatic, and on a
    ``stop`` request, after which ``checkpoint.Interrupted`` propagates). A run whose loss goes
    non-finite is recorded as failed, with its epoch and reason, and left out of the summary."""
    from .engine.experiment import load_more_sets, prepare
    from .engine.train import check_side_by_side, train_seeds

    names, paths = list(sets), list(sets.values())
    with contextlib.ExitStack() as held:
        if outs is not None:
            for name in names:  # one writer per output: a second run on a folder stops here, at once
                held.enter_context(OutputLock.folder(outs[name]))
            for name in names:  # temporary files of a writer killed mid-write (we hold the lock: no one writes)
                for debris in [*outs[name].glob("*.tmp"), *outs[name].glob(f"{CHECKPOINTS}/*.tmp")]:
                    debris.unlink(missing_ok=True)
        # Every bad input (any of the sets included) is reported here, before anything is written.
        exp = prepare(cfg.replace(distilled=paths[0]), progress=progress)
        data = dict(zip(names, [exp.train, *load_more_sets(exp, paths[1:], progress=progress)]))
        records = {}
        for name, path in zip(names, paths):
            set_cfg = exp.cfg.replace(distilled=path)
            records[name] = {"schema": 1, "name": name, "config": set_cfg.to_dict(),
                             "environment": environment(exp.device), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "train_images": len(data[name].images), "val_images": len(exp.val.images),
                             "teachers": exp.relabeler.inputs if exp.relabeler is not None else [], "runs": []}
        finished = _finished_runs(records, outs, restart) if outs is not None else {}
        runs = [(name, seed) for name in names for seed in exp.cfg.seeds if seed not in finished.get(name, {})]
        step = exp.cfg.parallel_seeds  # runs trained at once
        groups = [runs[at:at + step] for at in range(0, len(runs), step)]
        for group in groups:
            check_side_by_side([data[n] for n, _ in group])
        for name in names:
            record = records[name]
            record["runs"] = [finished[name][s] for s in exp.cfg.seeds if s in finished.get(name, {})]
            if verbose:
                kept = f"; {len(record['runs'])} finished seed(s) kept from {outs[name]}" if record["runs"] else ""
                print(f"\n== {name} under '{exp.cfg.preset}' on {exp.device}{kept} ==\n"
                      f"{describe(exp.cfg.replace(distilled=paths[names.index(name)]))}", flush=True)
        for group in groups:
            label = ", ".join(f"{n} seed {s}" for n, s in group) if len(names) > 1 else \
                f"{names[0]} seed {','.join(str(s) for _, s in group)}"
            ckpt = None
            if outs is not None:
                ident = {"config": records[group[0][0]]["config"], "runs": [list(r) for r in group]}
                # An unreadable checkpoint is renamed aside and its runs start over: the same command recovers,
                # where --restart would also discard the finished seeds.
                ckpt = Checkpointing(_checkpoint_path(outs[group[0][0]], group), checkpoint_every, stop, ident,
                                     set_aside_unreadable=True)
            results = train_seeds(exp, [s for _, s in group], progress=progress, desc=f"{exp.cfg.preset}: {label}",
                                  sets=[data[n] for n, _ in group], checkpoint=ckpt)
            for (name, _), (result, _) in zip(group, results):
                records[name]["runs"].append(result.summary())
            for name in dict.fromkeys(n for n, _ in group):
                order = {s: i for i, s in enumerate(exp.cfg.seeds)}
                records[name]["runs"].sort(key=lambda r: order[r["seed"]])
                records[name]["summary"] = summarize(records[name]["runs"])
                if outs is not None:  # after every group: an interrupted run keeps the finished seeds
                    write_json(outs[name] / "results.json", records[name])
            if ckpt is not None:
                ckpt.discard()  # only now: its runs are in results.json
        for name, record in records.items():
            record.setdefault("summary", summarize(record["runs"]))
            if outs is not None and any(r["status"] == "ok" for r in record["runs"]):
                plot_curves([record], outs[name] / "curves.png")
        return list(records.values())


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean +- std over the runs that finished; None when none did (failed runs are never a number)."""
    ok = [r for r in runs if r.get("status", "ok") == "ok"]
    return aggregate(ok) if ok else None


def failed_runs(records: list[dict[str, Any]]) -> list[str]:
    """One line per failed run of ``records``: set, seed, epoch and reason."""
    return [f"{rec['name']} seed {r['seed']} failed at epoch {r['failure']['epoch']}: {r['failure']['reason']}"
            for rec in records for r in rec["runs"] if r.get("status") == "failed"]


def _finished_runs(records: dict[str, dict[str, Any]], outs: dict[str, Path],
                   restart: bool) -> dict[str, dict[int, dict[str, Any]]]:
    """Per set, the runs of an earlier attempt to keep (by seed). ``restart`` discards them (and the
    checkpoints); a results.json of another config is refused."""
    finished: dict[str, dict[int, dict[str, Any]]] = {}
    for name, record in records.items():
        out = outs[name]
        if restart:
            (out / "results.json").unlink(missing_ok=True)
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
            continue
        old = _read_results(out / "results.json")
        if old is None:
            continue
        mine, theirs = record["config"], old.get("config", {})
        differ = sorted(k for k in set(mine) | set(theirs) if k not in RESUME_FREE and mine.get(k) != theirs.get(k))
        if differ:
            shown = "; ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} now" for k in differ[:4])
            raise RD3Error(f"--out {out} holds results of a different config ({shown}"
                           f"{'; ...' if len(differ) > 4 else ''}); pick another --out, or pass --restart to "
                           "discard them")
        finished[name] = {r["seed"]: r for r in old.get("runs", []) if r.get("status", "ok") in ("ok", "failed")}
    return finished


def _read_results(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RD3Error(f"{path} is unreadable ({e}); move it away, or pass --restart to discard it") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("runs"), list):
        raise RD3Error(f"{path} is not an rd3fast results file; move it away, or pass --restart")
    return rec


def _checkpoint_path(out: Path, group: list[tuple[str, int]]) -> Path:
    key = hashlib.sha256(json.dumps(group).encode()).hexdigest()[:12]
    return out / CHECKPOINTS / f"group-{key}.pt"


def table_row(record: dict[str, Any]) -> dict[str, Any]:
    """One set's record as a row of ``results.format_table`` (name, protocol, student, seeds, summary)."""
    cfg = record["config"]
    return {"name": record["name"], "preset": cfg["preset"], "student": cfg["student"],
            "seeds": sum(r.get("status", "ok") == "ok" for r in record["runs"]), "summary": record["summary"]}
