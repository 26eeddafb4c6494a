"""Benchmark sweeps: a TOML file -> a plan of runs, each with an identity, grouped K at once; one group
trained and its runs' files written (``run_group``), with a held-out split evaluated when the sweep
selects grid values on one (the choice itself is the leaderboard's: it reads only ROOT).

A run is one (set, protocol, student, grid point, seed). Its id hashes what its numbers depend on: the
resolved Config, the set's content fingerprint and the teachers' weights (``run_id``), so a finished run
is found again by any later sweep that asks for it, and a changed input is a new run, never a stale one.
Results live in ``ROOT/runs/<id>/`` (README "Benchmark sweeps"); the CLI is ``rd3fast.bench``, which
spreads the groups over ``rd3fast.executors`` and reports through ``rd3fast.leaderboard``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from . import config as config_mod
from . import train as training
from .atomic import atomic_write
from .checkpoint import Checkpointing, StopRequest
from .config import PRESETS, Config
from .data import BUILTIN, ImageSet, expand_channels, heldout_split, load_distilled, load_real
from .errors import Interrupted, RD3Error
from .experiment import Experiment, load_more_sets, pick_device, prepare
from .folders import folder_fingerprint, list_image_folder
from .lock import OutputLock
from .results import environment, write_json
from .tensors import MTT_FILES, is_mtt_folder

SCHEMA = 1
OWN = "own"  # protocol preset: each set's method's own recipe (METHOD_PRESETS)
# method -> (its preset, its preset on small sets: CIFAR / Tiny-ImageNet / the built-ins). random-real
# sets are DD-Ranking's baseline: they have no recipe of their own, so they get the rectified one.
METHOD_PRESETS: dict[str, tuple[str, str]] = {
    "random-real": ("rd3", "rd3-small"),
    "rded": ("rded", "rded-small"),
    "sre2l": ("sre2l", "sre2l-cifar"),
    "cda": ("cda", "cda"),
    "edc": ("edc", "edc"),
    "gvbsm": ("gvbsm", "gvbsm"),
    "lpld": ("lpld", "lpld"),
    # Coupled methods: their sets ship learned labels and an lr (MTT-style folders); TESLA evaluates as MTT.
    "mtt": ("mtt", "mtt"),
    "tesla": ("mtt", "mtt"),
    "datm": ("datm", "datm"),
}
BASELINE_METHOD = "random-real"
# Config keys the sweep sets itself, per run; in a TOML they go where the schema puts them.
SCHEMA_SET = {"preset": "protocols.<name>.preset", "distilled": "[[sets]]", "dataset": "dataset (top level)",
              "val": "val (top level)", "seeds": "seeds (top level)", "student": "students (top level)",
              "teacher": "[[teachers]]", "teacher_weights": "[[teachers]]"}
# Not part of a run's identity: they do not change its numbers (K at once equals one by one, tested), or
# they are replaced by a content identity (the set's fingerprint, the teachers' sha256).
IDENTITY_FREE = ("parallel_seeds", "val_cache", "distilled", "teacher_weights")
TOP_KEYS = ("root", "dataset", "val", "seeds", "students", "teachers", "sets", "protocols", "grid", "select")
SET_KEYS = ("name", "path", "method", "ipc", "baseline")
TEACHER_KEYS = ("arch", "weights")
SELECT_KEYS = ("keys", "mode", "size", "seed")
SELECT_MODES = ("heldout",)
GROUPS, RUNS = "groups", "runs"  # ROOT's sub-folders
RESULTS, RUN_INFO, PLAN = "results.json", "run.json", "plan.json"


# ---------------------------------------------------------------------------------------------------
# The sweep file
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SetSpec:
    name: str
    path: str  # absolute
    method: str
    ipc: int | None
    baseline: bool


@dataclass(frozen=True)
class TeacherSpec:
    arch: str
    weights: str  # absolute


@dataclass(frozen=True)
class Protocol:
    name: str
    preset: str  # a preset name, or OWN
    small: bool = False  # OWN only: the *-small variant of each method's preset
    overrides: dict[str, Any] = field(default_factory=dict)

    def preset_for(self, method: str) -> str:
        if self.preset != OWN:
            return self.preset
        if method not in METHOD_PRESETS:
            raise RD3Error(f"protocol {self.name!r} (own): method {method!r} has no preset of its own; known methods: "
                           f"{', '.join(METHOD_PRESETS)} (or evaluate that set under a named preset only)")
        return METHOD_PRESETS[method][1 if self.small else 0]


@dataclass(frozen=True)
class Select:
    keys: tuple[str, ...]
    mode: str = "heldout"
    size: int = 1000
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "mode": self.mode, "size": self.size, "seed": self.seed}


@dataclass(frozen=True)
class Sweep:
    path: str  # the TOML file (absolute)
    root: str | None  # absolute; the CLI's --root overrides it
    dataset: str | None
    val: str | None
    seeds: tuple[int, ...]
    students: tuple[str, ...]
    teachers: tuple[TeacherSpec, ...]
    sets: tuple[SetSpec, ...]
    protocols: tuple[Protocol, ...]
    grid: dict[str, tuple[Any, ...]]
    select: Select | None
    overrides: dict[str, Any]  # Config keys at the top level: every run
    parallel_seeds: int = 1  # the sweep's default K (--parallel-seeds overrides it)


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep TOML. Every problem is one RD3Error line naming the file and the key;
    relative paths are resolved against the TOML's folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise RD3Error(f"sweep {p} is a folder; expected a .toml file")
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise RD3Error(f"sweep file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RD3Error(f"cannot read sweep file {p} ({getattr(e, 'strerror', None) or e})") from None
    return parse_sweep(text, p)


def _toml_loads(text: str, where: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise RD3Error("reading a sweep needs Python >= 3.11 (tomllib) or `pip install tomli`") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RD3Error(f"{where}: not valid TOML ({e})") from None


def parse_sweep(text: str, path: str | Path) -> Sweep:
    """``load_sweep`` on text already read (``path`` names it in errors and anchors relative paths)."""
    where = Path(path).absolute()
    raw = _toml_loads(text, where)
    base = where.parent
    _known(raw, TOP_KEYS, where, "the top level", config_keys=True)
    top = _overrides({k: v for k, v in raw.items() if k not in TOP_KEYS}, where, "the top level")
    parallel = top.pop("parallel_seeds", 1)
    dataset, val = _test_set(raw, base, where)
    root = raw.get("root")
    seeds = config_mod.coerce("seeds", _list(raw, "seeds", where, default=[0]), label=f"{where}: seeds")
    try:
        Config(seeds=seeds)  # its checks: at least one, in range, none twice (each run gets one of them)
    except RD3Error as e:
        raise RD3Error(f"{where}: {e}") from None
    students = tuple(_typed(s, str, where, "students") for s in _list(raw, "students", where))
    if not students:
        raise RD3Error(f"{where}: students = [...] lists no student architecture")
    teachers = tuple(_teacher(t, i, base, where) for i, t in enumerate(_tables(raw, "teachers", where)))
    sets = tuple(_set(s, i, base, where) for i, s in enumerate(_tables(raw, "sets", where)))
    _unique([s.name for s in sets], where, "sets: name")
    protocols = _protocols(raw.get("protocols"), where)
    grid = _grid(raw.get("grid", {}), where)
    select = _select(raw.get("select"), grid, dataset, where)
    sweep = Sweep(path=str(where), root=str(base / _typed(root, str, where, "root")) if root is not None else None,
                  dataset=dataset, val=val, seeds=seeds, students=students, teachers=teachers, sets=sets,
                  protocols=protocols, grid=grid, select=select, overrides=top, parallel_seeds=parallel)
    for s in sets:  # an unknown method under `own` is an error now, not when its runs come up
        for proto in protocols:
            try:
                proto.preset_for(s.method)
            except RD3Error as e:
                raise RD3Error(f"{where}: [[sets]] {s.name!r}: {e}") from None
    return sweep


def _test_set(raw: dict[str, Any], base: Path, where: Path) -> tuple[str | None, str | None]:
    """(dataset, val): exactly one, a built-in name or an existing folder."""
    dataset, val = raw.get("dataset"), raw.get("val")
    if (dataset is None) == (val is None):
        raise RD3Error(f"{where}: give exactly one validation set: dataset = \"NAME\" ({', '.join(BUILTIN)}) or "
                       "val = \"FOLDER\"")
    if dataset is not None:
        if _typed(dataset, str, where, "dataset") not in BUILTIN:
            raise RD3Error(f"{where}: dataset {dataset!r} is not a built-in set ({', '.join(BUILTIN)}); for a "
                           "folder write val = \"FOLDER\"")
        return dataset, None
    return None, str(_path(base, _typed(val, str, where, "val"), where, "val", folder=True))


def _known(table: dict[str, Any], keys: Sequence[str], where: Path, what: str, config_keys: bool = False) -> None:
    """Every key of ``table`` is one of ``keys`` (or, with ``config_keys``, a Config key the sweep does not
    set itself): a misspelt key is an error, never silently ignored."""
    for key in table:
        if key in keys or (config_keys and key in config_mod.FIELD_NAMES and key not in SCHEMA_SET):
            continue
        hint = f"; write it as {SCHEMA_SET[key]}" if key in SCHEMA_SET else ""
        also = ", or a Config key (python -m rd3fast.run --help)" if config_keys else ""
        raise RD3Error(f"{where}: unknown key {key!r} in {what}{hint}; expected one of {', '.join(keys)}{also}")


def _overrides(table: dict[str, Any], where: Path, what: str) -> dict[str, Any]:
    """Config keys of a table, typed (config.coerce); a key the sweep sets itself is an error."""
    out = {}
    for key, value in table.items():
        if key in SCHEMA_SET:
            raise RD3Error(f"{where}: {key!r} in {what} is set by the sweep; write it as {SCHEMA_SET[key]}")
        if key not in config_mod.FIELD_NAMES:
            raise RD3Error(f"{where}: unknown key {key!r} in {what}; expected a Config key "
                           "(python -m rd3fast.run --help)")
        out[key] = config_mod.coerce(key, value, label=f"{where}: {what}: {key}")
    return out


def _typed(value: Any, typ: type, where: Path, key: str) -> Any:
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise RD3Error(f"{where}: {key} = {value!r}: expected a {typ.__name__}")
    return value


def _list(table: dict[str, Any], key: str, where: Path, default: list | None = None) -> list:
    value = table.get(key, default)
    if value is None:
        raise RD3Error(f"{where}: {key} = [...] is missing")
    if not isinstance(value, list):
        raise RD3Error(f"{where}: {key} = {value!r}: expected a list, e.g. {key} = [...]")
    return value


def _tables(raw: dict[str, Any], key: str, where: Path) -> list[dict[str, Any]]:
    value = raw.get(key)
    if not value:
        raise RD3Error(f"{where}: no [[{key}]] given; add at least one")
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RD3Error(f"{where}: {key} must be an array of tables: [[{key}]]")
    return value


def _path(base: Path, value: str, where: Path, what: str, folder: bool = False) -> Path:
    p = (base / Path(value).expanduser()).absolute()
    if not p.exists():
        raise RD3Error(f"{where}: {what} {p} does not exist")
    if folder and not p.is_dir():
        raise RD3Error(f"{where}: {what} {p} is not a folder")
    return p


def _unique(names: list[str], where: Path, what: str) -> None:
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RD3Error(f"{where}: {what} {twice[0]!r} is given twice; each must be unique")


def _teacher(table: dict[str, Any], i: int, base: Path, where: Path) -> TeacherSpec:
    what = f"[[teachers]] #{i + 1}"
    _known(table, TEACHER_KEYS, where, what)
    for key in TEACHER_KEYS:
        if key not in table:
            raise RD3Error(f"{where}: {what} has no {key} = \"...\"")
    weights = _path(base, _typed(table["weights"], str, where, f"{what} weights"), where, f"{what} weights")
    if weights.is_dir():
        raise RD3Error(f"{where}: {what} weights {weights} is a folder; expected a weights file")
    return TeacherSpec(_typed(table["arch"], str, where, f"{what} arch"), str(weights))


def _set(table: dict[str, Any], i: int, base: Path, where: Path) -> SetSpec:
    what = f"[[sets]] #{i + 1}"
    _known(table, SET_KEYS, where, what)
    for key in ("name", "path", "method"):
        if key not in table:
            raise RD3Error(f"{where}: {what} has no {key} = \"...\"")
    name = _typed(table["name"], str, where, f"{what} name")
    what = f"[[sets]] {name!r}"
    path = _path(base, _typed(table["path"], str, where, f"{what} path"), where, f"{what} path")
    method = _typed(table["method"], str, where, f"{what} method")
    ipc = table.get("ipc")
    if ipc is not None and (_typed(ipc, int, where, f"{what} ipc") < 1):
        raise RD3Error(f"{where}: {what} ipc = {ipc}: expected an integer >= 1")
    baseline = _typed(table.get("baseline", method == BASELINE_METHOD), bool, where, f"{what} baseline")
    return SetSpec(name, str(path), method, ipc, baseline)


def _protocols(raw: Any, where: Path) -> tuple[Protocol, ...]:
    if not raw:
        raise RD3Error(f"{where}: no [protocols.NAME] given; add one, e.g. [protocols.rd3] (a preset) or "
                       "[protocols.own] (each method's own preset)")
    if not isinstance(raw, dict):
        raise RD3Error(f"{where}: protocols must be tables: [protocols.NAME]")
    out = []
    for name, table in raw.items():
        what = f"[protocols.{name}]"
        if not isinstance(table, dict):
            raise RD3Error(f"{where}: {what} must be a table (preset = \"...\" and Config keys)")
        preset = _typed(table.get("preset", name), str, where, f"{what} preset")
        if preset != OWN and preset not in PRESETS:
            raise RD3Error(f"{where}: {what}: unknown preset {preset!r}; expected {OWN!r} or one of "
                           f"{', '.join(PRESETS)}")
        small = _typed(table.get("small", False), bool, where, f"{what} small")
        if "small" in table and preset != OWN:
            raise RD3Error(f"{where}: {what}: small applies to preset \"own\" only; name the small preset instead")
        overrides = _overrides({k: v for k, v in table.items() if k not in ("preset", "small")}, where, what)
        if "parallel_seeds" in overrides:
            raise RD3Error(f"{where}: {what}: parallel_seeds is a top-level key (or --parallel-seeds)")
        out.append(Protocol(name, preset, small, overrides))
    return tuple(out)


def _grid(raw: Any, where: Path) -> dict[str, tuple[Any, ...]]:
    if not isinstance(raw, dict):
        raise RD3Error(f"{where}: grid must be a table: [grid] then key = [values]")
    grid = {}
    for key, values in raw.items():
        if key == "parallel_seeds":
            raise RD3Error(f"{where}: [grid] parallel_seeds is not a grid key (it does not change a run's numbers)")
        if not isinstance(values, list) or not values:
            raise RD3Error(f"{where}: [grid] {key} = {values!r}: expected a non-empty list of values")
        typed = tuple(_overrides({key: v}, where, "[grid]")[key] for v in values)
        if len(set(map(repr, typed))) != len(typed):
            raise RD3Error(f"{where}: [grid] {key} lists a value twice")
        grid[key] = typed
    return grid


def _select(raw: Any, grid: dict[str, tuple], dataset: str | None, where: Path) -> Select | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RD3Error(f"{where}: select must be a table: [select]")
    _known(raw, SELECT_KEYS, where, "[select]")
    keys = raw.get("keys", list(grid))
    keys = [keys] if isinstance(keys, str) else keys
    if not isinstance(keys, list) or not keys:
        raise RD3Error(f"{where}: [select] keys = {keys!r}: expected a list of [grid] keys")
    for key in keys:
        if key not in grid:
            raise RD3Error(f"{where}: [select] key {key!r} has no [grid] values to select from")
    mode = raw.get("mode", "heldout")
    if mode not in SELECT_MODES:
        raise RD3Error(f"{where}: [select] mode = {mode!r}: expected one of {', '.join(SELECT_MODES)} (never the "
                       "test set)")
    size = _typed(raw.get("size", 1000), int, where, "[select] size")
    seed = _typed(raw.get("seed", 0), int, where, "[select] seed")
    if dataset is None:
        raise RD3Error(f"{where}: [select] carves its held-out split from a built-in training set; set dataset = "
                       f"\"NAME\" ({', '.join(BUILTIN)})")
    k = BUILTIN[dataset].num_classes
    if size < k or size % k or not 0 <= seed < config_mod.SEED_LIMIT:
        raise RD3Error(f"{where}: [select] size = {size}, seed = {seed}: the size must be a positive multiple of "
                       f"{dataset}'s {k} classes, the seed in [0, 2**32)")
    return Select(tuple(keys), mode, size, seed)


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


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class SetFacts:
    """What the plan needs of a set without decoding it: its content identity, size and shape."""

    fingerprint: dict[str, Any]
    images: int
    classes: int
    image_size: int


def set_facts(path: str | Path) -> SetFacts:
    """An ImageFolder's fingerprint is its listing (relative names, labels, sizes, mtimes: cheap, and what
    the decode depends on); a tensor set's is its content's sha256. Neither names the folder it is in, so
    a ROOT copied with its inputs (``cp -a``, rsync -a) keeps its results."""
    p = Path(path)
    if p.is_dir() and not is_mtt_folder(p):
        fp = {k: v for k, v in folder_fingerprint(p).items() if k != "root"}
        listing = list_image_folder(p)
        from PIL import Image

        with Image.open(listing.files[0]) as im:
            size = max(im.size)
        return SetFacts({"kind": "folder", **fp}, len(listing.files), len(listing.classes), size)
    files = [p / n for n in MTT_FILES] if p.is_dir() else [p]
    s = load_distilled(p, progress=False)
    return SetFacts({"kind": "tensors", "sha256": [sha256_file(f) for f in files]}, len(s.images),
                    int(s.labels.max()) + 1, max(s.image_size))


def run_id(cfg: Config, set_fp: dict[str, Any], teacher_sha256: Sequence[str], heldout: Select | None) -> str:
    """sha256 of the resolved config (less IDENTITY_FREE), the set's fingerprint, the teachers' weights and
    the held-out split evaluated: [:16]."""
    ident = {"config": {k: v for k, v in cfg.to_dict().items() if k not in IDENTITY_FREE}, "set": set_fp,
             "teachers": list(teacher_sha256),
             "heldout": None if heldout is None else {"size": heldout.size, "seed": heldout.seed}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def grid_points(grid: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in TOML order ([{}] without a grid)."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def resolve_run_config(sweep: Sweep, s: SetSpec, proto: Protocol, student: str, point: dict[str, Any],
                       seed: int) -> Config:
    """preset < top-level keys < protocol keys < grid point < what the sweep sets (set, student, seed...)."""
    preset = proto.preset_for(s.method)
    fixed = dict(distilled=s.path, dataset=sweep.dataset, val=sweep.val, student=student, seeds=(seed,),
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


# ---------------------------------------------------------------------------------------------------
# Training one group
# ---------------------------------------------------------------------------------------------------
def run_group(root: str | Path, group: Group, progress: bool = True, *, retry_failed: bool = False,
              stop: StopRequest | None = None, checkpoint_every: int = 0) -> list[dict[str, Any]]:
    """Train the group's unfinished runs K at once and write each one's results.json; return the group's
    results records (finished earlier ones included). Finished runs are never retrained, failed ones only
    with ``retry_failed``; an interrupted group resumes from ROOT/groups/<key>/checkpoint.pt. A run that
    fails (bad input, non-finite loss, out of memory) is recorded as failed with its message; anything else
    propagates (the executor records the group as failed). ``stop``: checkpoint and raise Interrupted."""
    if stop:  # a signal between groups: start no other
        raise Interrupted(stop.signum or signal.SIGTERM, f"before group {group.key}", resumable=True)
    folder = Path(root) / GROUPS / group.key
    with OutputLock.folder(folder, flag=f"group {group.key}"):  # one writer per group, across machines
        todo = to_train(root, group.runs, retry_failed)
        if todo:
            _train_group(root, folder, group.key, todo, progress, stop, checkpoint_every)
    return [rec for r in group.runs if (rec := read_result(root, r.id)) is not None]


def _train_group(root: str | Path, folder: Path, key: str, todo: list[RunSpec], progress: bool,
                 stop: StopRequest | None, checkpoint_every: int) -> None:
    t0 = time.perf_counter()
    ids = [r.id for r in todo]
    device = "?"
    # Its identity: the runs it trains (a checkpoint of another subset of the group is refused, not mixed in).
    ckpt = Checkpointing(folder / "checkpoint.pt", checkpoint_every, stop, {"runs": ids})
    if _stale(ckpt):  # left by an attempt on other runs of the group, which have finished since
        ckpt.discard()
    try:
        exp = _experiment(todo, progress)
        device = environment(exp.device)["device"]
        setup_s = time.perf_counter() - t0
        sets = _sets_of(exp, todo, progress)
        seeds: dict[str, list[str]] = {}
        for r in todo:
            seeds.setdefault(r.set.name, []).append(str(r.seed))
        desc = f"{todo[0].protocol}: " + "; ".join(f"{name} seeds {','.join(v)}" for name, v in seeds.items())
        results = training.train_seeds(exp, [r.seed for r in todo], progress=progress, desc=desc,
                                       sets=[sets[r.set.path] for r in todo], checkpoint=ckpt)
    except Exception as e:  # noqa: BLE001 - only the failures a run can have are recorded; the rest re-raise
        message = failure_message(e, len(todo))
        if message is None:
            raise
        wall = time.perf_counter() - t0
        for r in todo:
            _write_result(root, r, training.RunResult(seed=r.seed, failure={"epoch": None, "reason": message}),
                          key, ids, device, wall)
        return
    for r, (result, _) in zip(todo, results):
        _write_result(root, r, result, key, ids, device, setup_s + result.train_time_s)
    ckpt.discard()  # only now: every run of it is in its results.json


def _stale(ckpt: Checkpointing) -> bool:
    """Whether ckpt's file is a checkpoint of other runs (memory-mapped: only its identity is read)."""
    if not ckpt.path.is_file():
        return False
    try:
        state = torch.load(ckpt.path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable file is Checkpointing.load's to report
        return False
    return isinstance(state, dict) and state.get("identity") != ckpt.identity


def _experiment(todo: list[RunSpec], progress: bool) -> Experiment:
    """The group's data, teachers and finalized config, checked once; with a held-out split attached when
    the sweep selects grid values on one."""
    exp = prepare(todo[0].config, progress=progress)
    held = todo[0].heldout
    if held is not None:
        h = heldout_split(exp.cfg.dataset, held.size, held.seed, image_size=exp.cfg.image_size)
        exp = dataclasses.replace(exp, heldout=ImageSet(expand_channels(h.images, 3), h.labels, h.classes, h.source))
    return exp


def _sets_of(exp: Experiment, todo: list[RunSpec], progress: bool) -> dict[str, ImageSet]:
    """Each distinct set of the group decoded once: the first is exp.train, the others checked against it."""
    paths = list(dict.fromkeys(r.set.path for r in todo))
    return dict(zip(paths, [exp.train, *load_more_sets(exp, paths[1:], progress=progress)]))


def failure_message(e: BaseException, k: int = 1) -> str | None:
    """The recorded message of an exception a run can fail with (bad input, out of memory), else None."""
    if isinstance(e, RD3Error):
        return str(e)
    oom = getattr(torch, "OutOfMemoryError", None)
    if (oom is not None and isinstance(e, oom)) or (isinstance(e, RuntimeError) and "out of memory" in str(e)):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return (f"out of memory training {k} run(s) at once ({first}); rerun with --retry-failed and a smaller "
                "--parallel-seeds")
    return None


def _write_result(root: str | Path, run: RunSpec, result: training.RunResult, key: str, ids: list[str],
                  device: str, wall_s: float) -> None:
    """results.json of one run. ``wall_s``: the group's set-up plus training time, shared by its
    ``k`` runs (they trained at once, so device time is summed over groups, not runs)."""
    summary = result.summary()
    error = None
    if result.failure is not None:
        at = result.failure.get("epoch")
        error = f"failed at epoch {at}: {result.failure['reason']}" if at is not None else result.failure["reason"]
    record = {"schema": SCHEMA, "id": run.id, "status": summary["status"], "error": error, "run": summary,
              "group": {"key": key, "k": len(ids), "runs": ids, "device": device, "host": socket.gethostname()},
              "wall_s": wall_s, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(run_dir(root, run.id) / RESULTS, record)


# ---------------------------------------------------------------------------------------------------
# What is printed before anything starts
# ---------------------------------------------------------------------------------------------------
def plan_summary(plan: Plan, root: str | Path, retry_failed: bool = False, estimate: bool = True) -> str:
    """The resolved runs as a compact table (one row per set x protocol x student x grid point: its seeds,
    id prefixes and status), then the estimated cost of what is left to train."""
    sweep = plan.sweep
    shared = len(plan.runs) - len(distinct(plan.runs))
    also = f" ({shared} of them shared by protocols that resolve alike: trained once)" if shared else ""
    lines = [f"sweep {sweep.path}: {len(plan.runs)} runs{also} in {len(plan.groups)} groups (at most "
             f"{plan.parallel_seeds} at once) -> {root}", "",
             "| set | protocol (preset) | student | grid | seeds | ids | status |", "|" + "---|" * 7]
    rows: dict[tuple, list[RunSpec]] = {}
    for r in plan.runs:
        rows.setdefault((r.set.name, r.protocol, r.preset, r.student, json.dumps(r.grid)), []).append(r)
    states = {r.id: status(root, r.id) for r in plan.runs}
    for (name, proto, preset, student, grid), runs in rows.items():
        counts = {s: sum(states[r.id] == s for r in runs) for s in ("finished", "failed", "pending")}
        shown = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        point = ", ".join(f"{k}={v}" for k, v in json.loads(grid).items()) or "-"
        lines.append(f"| {name} | {proto} ({preset}) | {student} | {point} | {','.join(str(r.seed) for r in runs)} | "
                     f"{','.join(r.id[:6] for r in runs)} | {shown} |")
    if estimate:
        lines += ["", estimate_cost(plan, to_train(root, distinct(plan.runs), retry_failed))]
    return "\n".join(lines)


def run_steps(cfg: Config, images: int) -> int:
    """Optimizer steps of one run: epochs x ceil(images / batch) (floor with drop_last)."""
    per_epoch = images // cfg.batch_size if cfg.drop_last else math.ceil(images / cfg.batch_size)
    return cfg.epochs * per_epoch


def estimate_cost(plan: Plan, pending: Sequence[RunSpec]) -> str:
    """Steps and seconds of the pending runs. Seconds: per distinct model setup, a step (teachers' forward,
    student forward + backward + AdamW) and an evaluation batch timed here and now on random weights, times
    the steps and evaluation batches each run takes (run one at a time; K at once shares the teacher pass and
    is faster on a GPU). Data decoding and start-up are not included."""
    if not pending:
        return "estimated cost: nothing left to train"
    steps = sum(run_steps(r.config, r.images) for r in pending)
    try:
        seconds, device, how = _estimate_seconds(plan, pending)
    except RD3Error as e:
        return f"estimated cost: {len(pending)} runs to train, {steps:,} steps; no time estimate ({e})"
    return (f"estimated cost: {len(pending)} runs to train, {steps:,} steps (epochs x ceil(images/batch)), "
            f"about {_duration(seconds)} of {device} time run one at a time\n  ({how})")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _estimate_seconds(plan: Plan, pending: Sequence[RunSpec]) -> tuple[float, str, str]:
    facts = {s.path: set_facts(s.path) for s in {r.set for r in pending}}
    val_images = _val_images(plan.sweep)
    timed: dict[tuple, tuple[float, float]] = {}
    total = 0.0
    device = pick_device(pending[0].config.device)
    for r in pending:
        cfg, f = r.config, facts[r.set.path]
        size = cfg.image_size or (BUILTIN[cfg.dataset].image_size if cfg.dataset else f.image_size)
        setup = (cfg.student, cfg.teacher, f.classes, size, cfg.batch_size, cfg.eval_batch_size)
        if setup not in timed:
            timed[setup] = time_step(*setup, device=device)
        step_s, eval_s = timed[setup]
        evals = sum(training.should_eval(cfg, e) for e in range(cfg.epochs))
        held = r.heldout.size if r.heldout is not None else 0
        eval_batches = evals * math.ceil((val_images + held) / cfg.eval_batch_size)
        total += run_steps(cfg, r.images) * step_s + eval_batches * eval_s
    shown = "; ".join(f"{s[0]} + {'+'.join(s[1]) or 'no teacher'} at {s[3]} px, batch {s[4]}: {t * 1e3:.0f} ms/step"
                      for s, (t, _) in timed.items())
    name = environment(device)["device"]
    return total, name, f"a step and an evaluation batch timed just now on {name}, random weights: {shown}"


def _val_images(sweep: Sweep) -> int:
    if sweep.dataset is not None:
        return len(load_real(sweep.dataset, "val").labels)
    return len(list_image_folder(sweep.val).files)


def time_step(student: str, teachers: Sequence[str], classes: int, size: int, batch: int, eval_batch: int,
              device: torch.device, warmup: int = 5, repeats: int = 5) -> tuple[float, float]:
    """Seconds of one training step (teachers' forward + student forward/backward + AdamW) and of one
    evaluation batch, measured on random weights and inputs: the median of ``repeats`` calls after
    ``warmup`` (a process's first steps are several times slower: kernel selection, first-touch memory)."""
    from .models import build_model

    def timed(fn: Any) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    torch.manual_seed(0)
    model = build_model(student, classes, size).to(device)
    nets = [build_model(a, classes, size).to(device).eval() for a in teachers]
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(batch, 3, size, size, device=device)
    xe = torch.randn(min(eval_batch, 4 * batch), 3, size, size, device=device)

    def step() -> None:
        with torch.inference_mode():
            soft = sum(t(x) for t in nets) if nets else None
        logits = model(x)
        target = logits.detach() if soft is None else soft.clone()
        loss = -(logits.log_softmax(1) * target.softmax(1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def evaluate() -> None:
        with torch.inference_mode():
            model.eval()(xe)
        model.train()

    step_s = timed(step)
    return step_s, timed(evaluate) * eval_batch / len(xe)


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


