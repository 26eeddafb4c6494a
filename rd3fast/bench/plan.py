"""The plan of a sweep: every run (set x protocol x student x grid point x seed) with its resolved Config and
its id (``identity.run_id``), grouped K at once (``group_runs``: runs that differ only in seed and set, on
sets of one size). Results live in ``ROOT/runs/<id>/`` (``store``); ``group.run_group`` trains one group;
the CLI is ``python -m rd3fast.bench``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .. import config as config_mod
from ..config import Config
from ..errors import RD3Error
from .identity import run_id, set_facts, sha256_file
from .sweepfile import Protocol, Select, SetSpec, Sweep

SCHEMA = 1  # of plan.json and results.json


# ---------------------------------------------------------------------------------------------------
# The plan: runs with identities, grouped K at once
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One run: everything a worker needs to train it, and its identity."""

    id: str
    set: SetSpec
    images: int  # of the set: runs trained at once need equal counts
    protocol: str
    preset: str
    student: str
    seed: int
    grid: dict[str, Any]
    teachers: tuple[dict[str, str], ...]  # arch, weights, sha256
    config: Config
    heldout: Select | None = None  # evaluate on this held-out split too (a [select] sweep)

    def info(self) -> dict[str, Any]:
        """ROOT/runs/<id>/run.json (and plan.json's "runs")."""
        return {"id": self.id, "set": {**dataclasses.asdict(self.set), "images": self.images},
                "protocol": self.protocol, "preset": self.preset, "student": self.student, "seed": self.seed,
                "grid": self.grid, "teachers": list(self.teachers),
                "heldout": None if self.heldout is None else {"size": self.heldout.size, "seed": self.heldout.seed},
                "config": self.config.to_dict()}


@dataclass(frozen=True)
class Group:
    """Runs trained at once (one Experiment, one teacher pass per step): equal configs but seeds and sets,
    sets of one size. Picklable: an executor may ship it to another process or machine."""

    key: str
    runs: tuple[RunSpec, ...]


@dataclass(frozen=True)
class Plan:
    sweep: Sweep
    runs: tuple[RunSpec, ...]
    groups: tuple[Group, ...]
    parallel_seeds: int

    def to_json(self) -> dict[str, Any]:
        """ROOT/plan.json."""
        return {"schema": SCHEMA, "sweep": self.sweep.path, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "parallel_seeds": self.parallel_seeds, "runs": [r.info() for r in self.runs],
                "groups": [{"key": g.key, "runs": [r.id for r in g.runs]} for g in self.groups],
                "select": None if self.sweep.select is None else self.sweep.select.to_dict(),
                "protocols": [p.name for p in self.sweep.protocols], "sets": [s.name for s in self.sweep.sets]}


def grid_points(grid: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in TOML order ([{}] without a grid)."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def resolve_run_config(sweep: Sweep, s: SetSpec, proto: Protocol, student: str, point: dict[str, Any],
                       seed: int) -> Config:
    """preset < top-level keys < protocol keys < grid point < what the sweep sets (set, student, seed...)."""
    preset = proto.preset_for(s.method)
    fixed = dict(distilled=s.path, dataset=sweep.dataset, data_root=sweep.data_root, val=sweep.val,
                 student=student, seeds=(seed,),
                 teacher=tuple(t.arch for t in sweep.teachers),
                 teacher_weights=tuple(t.weights for t in sweep.teachers), parallel_seeds=1)
    try:
        return config_mod.resolve(preset, overrides={**sweep.overrides, **proto.overrides, **point, **fixed})
    except RD3Error as e:
        raise RD3Error(f"{sweep.path}: protocol {proto.name!r} ({preset}), set {s.name!r}"
                       f"{', grid ' + json.dumps(point) if point else ''}: {e}") from None


def build_plan(sweep: Sweep, parallel_seeds: int | None = None) -> Plan:
    """Every run of the sweep (sets x protocols x students x grid x seeds, in that order), with ids, grouped
    at most K = ``parallel_seeds`` (default: the sweep's) at once."""
    k = parallel_seeds or sweep.parallel_seeds
    if k < 1:
        raise RD3Error(f"--parallel-seeds: expected an integer >= 1, got {k}")
    facts = {s.path: set_facts(s.path) for s in sweep.sets}
    sha = {t.weights: sha256_file(t.weights) for t in sweep.teachers}
    teachers = tuple({"arch": t.arch, "weights": t.weights, "sha256": sha[t.weights]} for t in sweep.teachers)
    runs, seen = [], {}
    for s, proto, student, point, seed in itertools.product(sweep.sets, sweep.protocols, sweep.students,
                                                            grid_points(sweep.grid), sweep.seeds):
        cfg = resolve_run_config(sweep, s, proto, student, point, seed)
        rid = run_id(cfg, facts[s.path].fingerprint, [t["sha256"] for t in teachers], sweep.select)
        # The same id twice: two protocols that resolve alike (random-real under `own` is rd3) share the
        # run, trained once and reported under both; two sets of identical content are a mistake.
        if rid in seen and seen[rid] != s.name:
            raise RD3Error(f"{sweep.path}: sets {seen[rid]!r} and {s.name!r} hold the same images (same "
                           "fingerprint); list the set once")
        seen[rid] = s.name
        runs.append(RunSpec(rid, s, facts[s.path].images, proto.name, cfg.preset, student, seed, point, teachers,
                            cfg, sweep.select))
    return Plan(sweep, tuple(runs), group_runs(runs, k), k)


def distinct(runs: Iterable[RunSpec]) -> list[RunSpec]:
    """Each run id once (the first entry), in plan order: what is trained."""
    first: dict[str, RunSpec] = {}
    for r in runs:
        first.setdefault(r.id, r)
    return list(first.values())


def group_runs(runs: Sequence[RunSpec], k: int) -> tuple[Group, ...]:
    """Runs whose configs differ only in seeds and set, on sets of one size, in chunks of at most ``k``
    (in plan order). Independent of what is finished, so a group's key, and its checkpoint, are the same
    on every rerun."""
    buckets: dict[str, list[RunSpec]] = {}
    for r in distinct(runs):
        shared = {k_: v for k_, v in r.config.to_dict().items() if k_ not in ("seeds", "distilled")}
        buckets.setdefault(json.dumps([shared, r.images], sort_keys=True), []).append(r)
    groups = []
    for members in buckets.values():
        for at in range(0, len(members), k):
            chunk = tuple(members[at:at + k])
            key = hashlib.sha256(json.dumps(sorted(r.id for r in chunk)).encode()).hexdigest()[:16]
            groups.append(Group(key, chunk))
    return tuple(groups)
