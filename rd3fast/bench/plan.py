"""The plan of a sweep: every run (set x protocol x student x grid point x seed) with its resolved Config and
its id (``identity``: the config and its inputs by content), grouped K at once (``group_runs``: runs that
differ only in seed and set, on sets of one size). Results live in ``ROOT/runs/<id>/`` (``store``);
``group.run_group`` trains one group; the CLI is ``python -m rd3fast.bench``.

Planning is linear in the runs, so a large grid costs time in proportion and a slip in one (a million
runs) is refused up front (``sweepfile.check_size``, ``max_runs``) instead of hanging: each grid point's
config is built and checked once and serialized once, its seeds derived from it, and each input read and
hashed once per plan.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .. import config as config_mod
from ..config import Config
from ..data.content import HashCache, inputs_identity, split_identity, test_set_identity
from ..data.datasets import BUILTIN, list_files, read_arrays
from ..errors import RD3Error
from ..progress import iterate
from .identity import SetFacts, identity_base, seeded_id, set_facts
from .sweepfile import HARD, NAUG, REAL, REAL_PRESET, Protocol, Select, SetSpec, Sweep, check_size
from .teachers import check_teachers

SCHEMA = 1  # of plan.json and results.json
PROGRESS_FROM = 20_000  # runs from which planning says it is planning, with a bar on a terminal


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
    bucket: str = ""  # group_bucket(config, images), computed once per config by build_plan ("": not yet)
    role: str = ""  # "": a cell of the table; HARD / NAUG / REAL: a run [scores] needs (score_runs)

    @property
    def label(self) -> str:
        """The protocol as the plan's table and progress lines show it: rd3-small, rd3-small/hard, ..."""
        return f"{self.protocol}/{self.role}" if self.role and self.role != REAL else self.protocol

    def info(self) -> dict[str, Any]:
        """ROOT/runs/<id>/run.json (and plan.json's "runs")."""
        return {"id": self.id, "set": {**dataclasses.asdict(self.set), "images": self.images}, "role": self.role,
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
    facts: dict[str, SetFacts] = field(default_factory=dict)  # set path -> what was read of it at plan time

    def to_json(self) -> dict[str, Any]:
        """ROOT/plan.json."""
        return {"schema": SCHEMA, "sweep": self.sweep.path, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "parallel_seeds": self.parallel_seeds, "runs": [r.info() for r in self.runs],
                "groups": [{"key": g.key, "runs": [r.id for r in g.runs]} for g in self.groups],
                "select": None if self.sweep.select is None else self.sweep.select.to_dict(),
                "scores": self.sweep.scores.to_dict() if self.sweep.scores.on else None,
                "protocols": [p.name for p in self.sweep.protocols], "sets": [s.name for s in self.sweep.sets]}


def grid_points(grid: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in TOML order ([{}] without a grid)."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def resolve_run_config(sweep: Sweep, s: SetSpec, proto: Protocol, student: str, point: dict[str, Any],
                       seed: int) -> Config:
    """preset < top-level keys < protocol keys < grid point < what the sweep sets (set, student, seed...):
    ``config.resolve``'s result, built with one check of the config instead of three (see ``_preset_values``)."""
    preset = proto.preset_for(s.method)
    fixed = dict(distilled=s.path, dataset=sweep.dataset, data_root=sweep.data_root, val=sweep.val,
                 student=student, seeds=(seed,),
                 teacher=tuple(t.arch for t in sweep.teachers),
                 teacher_weights=tuple(t.weights for t in sweep.teachers), parallel_seeds=1)
    overrides = {**sweep.overrides, **proto.overrides, **point, **fixed}
    if "lr" in overrides:  # config.resolve's rule: a number given for lr is trained with, also under a preset
        overrides = {"lr_from_set": False, **overrides}  # that takes it from the set (mtt, datm)
    try:
        return Config(**{**_preset_values(preset), **overrides, "preset": preset})
    except RD3Error as e:
        hint = "; add a [[teachers]] table" if not sweep.teachers and "teacher" in str(e) else ""
        raise RD3Error(f"{sweep.path}: protocol {proto.name!r} ({preset}), set {s.name!r}"
                       f"{', grid ' + json.dumps(point) if point else ''}: {e}{hint}") from None


@functools.lru_cache(maxsize=None)
def _preset_values_cached(name: str) -> tuple[tuple[str, Any], ...]:
    return tuple((k, config_mod.coerce(k, v)) for k, v in config_mod.preset(name).to_dict().items())


def _preset_values(name: str) -> dict[str, Any]:
    """A preset's fields coerced as ``config.resolve`` coerces them, once per preset. The sweep's own values
    are coerced when the file is parsed (sweepfile), so a run's Config is built and checked once; through
    ``config.resolve`` it was built three times (the preset, every value coerced again, the result), most of
    the time of planning a large grid (tests/test_identity.py checks the two agree)."""
    return dict(_preset_values_cached(name))


def _with_seed(cfg: Config, seed: int) -> Config:
    """``cfg`` with seeds (seed,), without checking it again: every other field is the checked config's, and
    the seed was checked with the sweep's seeds (sweepfile). ``Config.replace`` would check every field
    again per seed, half the time of planning a grid point."""
    out = copy.copy(cfg)
    object.__setattr__(out, "seeds", (seed,))
    return out


class _Inputs:
    """The inputs of a plan's runs by content (``data.content``), each read once per plan however many runs
    share it, through one stat-keyed hash cache."""

    def __init__(self, sweep: Sweep, progress: bool) -> None:
        self.sweep, self.progress = sweep, progress
        self.cache = HashCache()
        self.test = test_set_identity(sweep.dataset, sweep.data_root, sweep.val, self.cache, progress)
        shas = {t.weights: self.cache.sha256(t.weights) for t in sweep.teachers}
        self.teachers = tuple({"arch": t.arch, "weights": t.weights, "sha256": shas[t.weights]} for t in sweep.teachers)
        self.teacher_sha256 = [t["sha256"] for t in self.teachers]
        self.heldout = None
        if sweep.select is not None:
            train = split_identity(sweep.dataset, "train", sweep.data_root, self.cache, progress)
            self.heldout = {"size": sweep.select.size, "seed": sweep.select.seed, "train": train}
        self.cache.flush()
        self._facts: dict[tuple, SetFacts] = {}
        self._files: dict[tuple, dict[str, Any]] = {}
        self.facts: dict[str, SetFacts] = {}  # set path -> its facts (the first read)

    def set_facts(self, s: SetSpec, proto: Protocol, cfg: Config) -> SetFacts:
        """The set read as its run reads it (class map, --mean/--std, --aug dsa): once per distinct way."""
        key = (s.path, cfg.class_map, tuple(cfg.mean), tuple(cfg.std), cfg.aug == "dsa")
        if key not in self._facts:
            try:
                self._facts[key] = set_facts(s.path, cfg, self.cache)
            except RD3Error as e:
                raise RD3Error(f"{self.sweep.path}: [[sets]] {s.name!r} under protocol {proto.name!r}: {e}") from None
            self.facts.setdefault(s.path, self._facts[key])
        return self._facts[key]

    def real_facts(self, cfg: Config) -> SetFacts:
        """The real-hard runs' training set: the dataset's training split by content (``split_identity``)."""
        sweep = self.sweep
        path = real_set(sweep).path
        if path not in self.facts:
            info = BUILTIN[sweep.dataset]
            ident = split_identity(sweep.dataset, "train", sweep.data_root, self.cache, self.progress)
            if info.kind == "files":
                images = len(list_files(sweep.dataset, "train", sweep.data_root).files)
            else:  # read once here (the arrays of a set held in memory: CIFAR's 150 MB at most)
                images = len(read_arrays(sweep.dataset, "train", sweep.data_root)[1])
            self.facts[path] = SetFacts(ident, images, info.num_classes, info.image_size)
        return self.facts[path]

    def files(self, cfg: Config) -> dict[str, Any]:
        """``content.inputs_identity`` of the run's class map and ZCA source, once per distinct value."""
        key = (cfg.class_map, cfg.zca, cfg.zca_train, cfg.dataset, cfg.data_root)
        if key not in self._files:
            try:
                self._files[key] = inputs_identity(cfg, self.cache, self.progress)
            except RD3Error as e:
                raise RD3Error(f"{self.sweep.path}: {e}") from None
        return self._files[key]


def build_plan(sweep: Sweep, parallel_seeds: int | None = None, progress: bool = True) -> Plan:
    """Every run of the sweep (sets x protocols x students x grid x seeds, in that order), with ids, grouped
    at most K = ``parallel_seeds`` (default: the sweep's) at once.

    Linear in the runs: each (set, protocol, student, grid point) is resolved and serialized once and its
    seeds derived from it; each input is read and hashed once per plan. A grid above ``max_runs`` is refused
    before anything is read; one of ``PROGRESS_FROM`` runs or more says so on stderr and shows a bar (on a
    terminal)."""
    k = parallel_seeds or sweep.parallel_seeds
    if k < 1:
        raise RD3Error(f"--parallel-seeds: expected an integer >= 1, got {k}")
    n = check_size(sweep)
    announce = progress and n >= PROGRESS_FROM
    if announce:
        print(f"rd3fast bench: planning {n:,} runs", file=sys.stderr, flush=True)
    inputs = _Inputs(sweep, progress)
    runs: list[RunSpec] = []
    seen: dict[str, str] = {}
    combos = itertools.product(sweep.sets, sweep.protocols, sweep.students, grid_points(sweep.grid))
    total = n // len(sweep.seeds)
    for s, proto, student, point in iterate(combos, total=total, desc="plan", unit="config", enabled=announce):
        cfg0 = resolve_run_config(sweep, s, proto, student, point, sweep.seeds[0])
        _add_seeds(runs, seen, sweep, inputs, s, proto.name, student, point, cfg0, inputs.set_facts(s, proto, cfg0))
        if sweep.scores.ars:  # the same recipe without augmentation (ARS's syn-naug and rdm-naug)
            naug = variant(cfg0, NAUG, sweep, proto.name, s.name)
            _add_seeds(runs, seen, sweep, inputs, s, proto.name, student, point, naug,
                       inputs.set_facts(s, proto, naug), NAUG)
        if sweep.scores.lrs and proto.name == sweep.scores.protocol:  # HLR's syn-hard, one recipe for every set
            hard = variant(cfg0, HARD, sweep, proto.name, s.name)
            _add_seeds(runs, seen, sweep, inputs, s, proto.name, student, point, hard,
                       inputs.set_facts(s, proto, hard), HARD)
    if sweep.scores.lrs and sweep.scores.real_hard is None:  # HLR's real-hard: per student, no grid
        for student in sweep.students:
            cfg0 = real_config(sweep, student, sweep.seeds[0])
            facts = inputs.real_facts(cfg0)
            _add_seeds(runs, seen, sweep, inputs, real_set(sweep), REAL, student, {}, cfg0, facts, REAL)
    # Every teacher loads into its architecture at the runs' class count and size: a bad one is found now,
    # not when its group comes up (hours into a sweep).
    check_teachers(sweep, [(r.config, inputs.facts[r.set.path]) for r in distinct(runs)])
    return Plan(sweep, tuple(runs), group_runs(runs, k), k, inputs.facts)


def _add_seeds(runs: list[RunSpec], seen: dict[str, str], sweep: Sweep, inputs: _Inputs, s: SetSpec, protocol: str,
               student: str, point: dict[str, Any], cfg0: Config, facts: SetFacts, role: str = "") -> None:
    """The runs of one resolved config, one per seed, with their ids (the config is serialized once)."""
    as_dict = cfg0.to_dict()  # once: identity and group bucket both serialize it
    heldout = None if role == REAL else inputs.heldout  # the real-hard runs train on the whole training split
    base = identity_base(cfg0, facts.identity, inputs.test, inputs.teacher_sha256 if cfg0.teacher else [], heldout,
                         inputs.files(cfg0), as_dict)
    bucket = group_bucket(cfg0, facts.images, as_dict)
    for seed in sweep.seeds:
        cfg = cfg0 if seed == sweep.seeds[0] else _with_seed(cfg0, seed)
        rid = seeded_id(base, (seed,))
        # The same id twice: two protocols that resolve alike (random-real under `own` is rd3) share the run,
        # trained once and reported under both; two sets of identical content are a mistake.
        if rid in seen and seen[rid] != s.name:
            raise RD3Error(f"{sweep.path}: sets {seen[rid]!r} and {s.name!r} hold the same images (same content); "
                           "list the set once")
        seen[rid] = s.name
        runs.append(RunSpec(rid, s, facts.images, protocol, cfg.preset, student, seed, point,
                            inputs.teachers if cfg0.teacher else (), cfg, None if role == REAL else sweep.select,
                            bucket, role))


# ---------------------------------------------------------------------------------------------------
# The runs [scores] adds (DD-Ranking's HLR, IOR, LRS and ARS: README "DD-Ranking's scores")
# ---------------------------------------------------------------------------------------------------
# Config keys of the sweep's top level that say how a run executes or how the test set is read, not what
# is trained: they apply to the real-hard runs too, whose recipe is otherwise the pretrain preset's.
REAL_PASSED = ("device", "amp", "cuda_graph", "val_cache", "loader", "aug_backend", "eval_batch_size", "image_size",
               "val_resize_ratio", "compile_teacher")


def variant(cfg: Config, role: str, sweep: Sweep, protocol: str, set_name: str) -> Config:
    """A run's config as one of [scores]'s variants.

    HARD (DD-Ranking's syn-hard, ``_compute_hard_label_metrics``): the same recipe with cross-entropy on the
    images' hard labels, no teacher and no set labels; the mixing augmentation (CutMix/Mixup, DSA) off unless
    ``use_aug_for_hard``, crops and flips kept, as its ``aug_func`` is the only augmentation it switches.
    NAUG (ARS's syn-naug / rdm-naug): the same recipe, labels and loss without augmentation: with
    ``naug = "all"`` no crop, flip, PatchShuffle, mixing or DSA; with ``"mix"`` only the mixing and DSA off
    (DD-Ranking's ``aug_robust.py``: ``aug_func=None``, its dataset transforms untouched)."""
    sc = sweep.scores
    changes: dict[str, Any] = {}
    if role == HARD:
        changes = dict(loss="ce", teacher=(), teacher_weights=(), teacher_mean=(), teacher_std=(),
                       label_source="teacher", ce_weight=0.0, cache=None, cache_mode="off", logit_norm=False,
                       teacher_bn_train=False)
        if not sc.use_aug_for_hard:
            changes.update(mix="none", **_no_dsa(cfg))
    elif role == NAUG:
        changes = dict(mix="none", **_no_dsa(cfg))
        if sc.naug == "all":
            changes.update(crop="none", flip_p=0.0, patch_shuffle=1, edc_noop_shuffle=False)
    try:
        return cfg.replace(**changes)
    except RD3Error as e:
        raise RD3Error(f"{sweep.path}: [scores] {role} runs of set {set_name!r} under protocol {protocol!r}: "
                       f"{e}") from None


def _no_dsa(cfg: Config) -> dict[str, Any]:
    """DSA off where it is on; nothing otherwise (a strategy the standard pipeline never reads would only
    change the run's id)."""
    return {"dsa_strategy": "none"} if cfg.aug == "dsa" else {}


def real_set(sweep: Sweep) -> SetSpec:
    """The real-hard reference's training set: the sweep dataset's whole training split."""
    return SetSpec(f"{sweep.dataset} (train)", f"{sweep.dataset}:train", "real", None, False)


def real_config(sweep: Sweep, student: str, seed: int) -> Config:
    """DD-Ranking's real-hard: the student trained on the real training split with hard labels. Its recipe is
    the pretrain preset (SGD, random crop + flip, cosine) with [scores.real] over it; DD-Ranking's own
    (``REAL_DATA_TRAINING_CONFIG``) differs per dataset and model and is one [scores.real] away."""
    passed = {k: v for k, v in sweep.overrides.items() if k in REAL_PASSED}
    fixed = dict(dataset=sweep.dataset, data_root=sweep.data_root, val=None, distilled=None, student=student,
                 seeds=(seed,), parallel_seeds=1)
    try:
        return Config(**{**_preset_values(REAL_PRESET), **passed, **sweep.scores.real, **fixed, "preset": REAL_PRESET})
    except RD3Error as e:
        raise RD3Error(f"{sweep.path}: [scores.real] (the real-hard runs, preset {REAL_PRESET}): {e}") from None


def group_bucket(cfg: Config, images: int, as_dict: dict[str, Any] | None = None) -> str:
    """What runs trained at once share, as a digest: the config but seeds and set, and the set's size
    (``as_dict``: ``cfg.to_dict()`` when the caller has it)."""
    shared = {k_: v for k_, v in (as_dict or cfg.to_dict()).items() if k_ not in ("seeds", "distilled")}
    return hashlib.sha256(json.dumps([shared, images], sort_keys=True).encode()).hexdigest()


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
        buckets.setdefault(r.bucket or group_bucket(r.config, r.images), []).append(r)
    groups = []
    for members in buckets.values():
        for at in range(0, len(members), k):
            chunk = tuple(members[at:at + k])
            key = hashlib.sha256(json.dumps(sorted(r.id for r in chunk)).encode()).hexdigest()[:16]
            groups.append(Group(key, chunk))
    return tuple(groups)
