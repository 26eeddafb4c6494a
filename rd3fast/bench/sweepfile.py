"""The sweep file: a TOML file parsed and checked into a ``Sweep`` (sets, teachers, protocols, students,
grid, held-out selection), every bad key or value one line naming it (README "Benchmark sweeps").
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import config as config_mod
from ..config import PRESETS, Config
from ..data.datasets import BUILTIN, locate
from ..engine.pretraining import STREAMED_SETS
from ..errors import RD3Error, read_text

OWN = "own"  # protocol preset: each set's method's own recipe (METHOD_PRESETS)


# method -> (its preset, its preset on small sets: CIFAR / Tiny-ImageNet / the built-ins). random-real
# sets are DD-Ranking's baseline: they have no recipe of their own, so they get the rectified one.
METHOD_PRESETS: dict[str, tuple[str, str]] = {
    "random-real": ("rd3", "rd3-small"),
    # Coreset selections (herding, k-center; DeepCore) ship no post-evaluation recipe either: the rectified one.
    "herding": ("rd3", "rd3-small"),
    "kcenter": ("rd3", "rd3-small"),
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
              "data_root": "data_root (top level)",
              "val": "val (top level)", "seeds": "seeds (top level)", "student": "students (top level)",
              "teacher": "[[teachers]]", "teacher_weights": "[[teachers]]"}


TOP_KEYS = ("root", "dataset", "data_root", "val", "seeds", "students", "teachers", "sets", "protocols", "grid",
            "select", "max_runs", "scores")


MAX_RUNS = 100_000  # runs a sweep may plan unless its max_runs says more (check_size)


# Config keys naming a file the sweep does not set itself: relative to the TOML's folder, like its own paths.
PATH_KEYS = ("class_map", "zca_train")


SET_KEYS = ("name", "path", "method", "ipc", "baseline")


TEACHER_KEYS = ("arch", "weights")


SELECT_KEYS = ("keys", "mode", "size", "seed")


SELECT_MODES = ("heldout",)


SCORE_KEYS = ("lrs", "ars", "lrs_weight", "ars_weight", "protocol", "use_aug_for_hard", "naug", "real_hard", "real",
              "units")


NAUG_LEVELS = ("all", "mix")  # what the no-augmentation runs switch off (Scores.naug)


SCORE_UNITS = ("fraction", "percent")  # the accuracies alpha and beta are computed from (Scores.units)


HARD, NAUG, REAL = "hard", "naug", "real"  # the roles of the runs [scores] adds (plan.RunSpec.role)


REAL_PRESET = "pretrain"  # the real-hard reference runs: hard labels on the full training split


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
class Scores:
    """``[scores]``: DD-Ranking's label-robust and augmentation-robust scores (README "DD-Ranking's scores"),
    and the runs they need, which the planner adds (``plan.score_runs``)."""

    lrs: bool = False
    ars: bool = False
    lrs_weight: float = 0.5  # w in alpha = w IOR - (1 - w) HLR (DD-Ranking's lrs_lambda)
    ars_weight: float = 0.5  # gamma in beta = gamma (syn-aug - rdm-aug) + (1 - gamma) (syn-naug - rdm-naug)
    protocol: str = ""  # the sweep protocol whose recipe the hard-label runs use, with CE on hard labels
    use_aug_for_hard: bool = False  # DD-Ranking's flag: the hard-label runs keep the mixing augmentation
    naug: str = "all"  # no-augmentation runs: "all" augmentation off | "mix": only CutMix/Mixup/DSA (its code)
    real_hard: float | None = None  # a known real-hard top-1 (%) instead of runs (ImageNet: DD-Ranking's 56.5)
    real: dict[str, Any] = field(default_factory=dict)  # [scores.real]: Config keys over the pretrain preset
    units: str = "fraction"  # alpha, beta from accuracies in [0, 1] (its docs) | "percent" (its code)

    @property
    def on(self) -> bool:
        return self.lrs or self.ars

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    data_root: str | None = None  # absolute: where `dataset` lies (None: $RD3FAST_DATA, or a set that needs none)
    max_runs: int = MAX_RUNS  # a sweep of more runs is refused when the file is read, naming this key
    scores: Scores = field(default_factory=Scores)  # [scores]: off unless lrs or ars


def count_runs(sweep: Sweep) -> int:
    """sets x protocols x students x grid points x seeds: the runs a plan lists (before protocols that
    resolve alike share theirs), and those ``[scores]`` adds: one hard-label protocol, a no-augmentation
    variant of each protocol, the real-hard reference per student and seed."""
    per_protocol = len(sweep.sets) * len(sweep.students) * math.prod(map(len, sweep.grid.values())) * len(sweep.seeds)
    sc = sweep.scores
    extra = (per_protocol if sc.lrs else 0) + (per_protocol * len(sweep.protocols) if sc.ars else 0)
    real = len(sweep.students) * len(sweep.seeds) if sc.lrs and sc.real_hard is None else 0
    return per_protocol * len(sweep.protocols) + extra + real


def check_size(sweep: Sweep) -> int:
    """The number of runs, or one RD3Error when it is above the sweep's ``max_runs``: a slip in a grid makes
    millions of runs, whose planning takes minutes and whose table nobody reads. Checked when the file is
    parsed, before anything is read or hashed."""
    n = count_runs(sweep)
    if n > sweep.max_runs:
        raise RD3Error(f"{sweep.path}: {n:,} runs (sets x protocols x students x grid points x seeds, and those "
                       f"[scores] adds) are more than "
                       f"max_runs = {sweep.max_runs:,}; to plan them anyway write max_runs = {n} at the top level of "
                       "the sweep file")
    return n


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep TOML. Every problem is one RD3Error line naming the file and the key;
    relative paths are resolved against the TOML's folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise RD3Error(f"sweep {p} is a folder; expected a .toml file")
    return parse_sweep(read_text(p, f"sweep file {p} does not exist", f"sweep file {p}"), p)


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
    if parallel < 1:
        raise RD3Error(f"{where}: parallel_seeds = {parallel}: expected an integer >= 1 (runs trained at once per group)")
    dataset, val = _test_set(raw, base, where)
    data_root = _data_root(raw, dataset, base, where)
    root = raw.get("root")
    max_runs = _typed(raw.get("max_runs", MAX_RUNS), int, where, "max_runs")
    if max_runs < 1:
        raise RD3Error(f"{where}: max_runs = {max_runs}: expected an integer >= 1 (the most runs this sweep may plan)")
    seeds = config_mod.coerce("seeds", _list(raw, "seeds", where, default=[0]), label=f"{where}: seeds")
    try:
        Config(seeds=seeds)  # its checks: at least one, in range, none twice (each run gets one of them)
    except RD3Error as e:
        raise RD3Error(f"{where}: {e}") from None
    students = tuple(_typed(s, str, where, "students") for s in _list(raw, "students", where))
    if not students:
        raise RD3Error(f"{where}: students = [...] lists no student architecture")
    # Optional: protocols on hard labels or the set's own (CE, --label-source set) run no teacher; one that needs
    # a teacher without one is refused when the plan resolves it.
    teachers = tuple(_teacher(t, i, base, where) for i, t in
                     enumerate(_tables(raw, "teachers", where) if "teachers" in raw else []))
    sets = tuple(_set(s, i, base, where) for i, s in enumerate(_tables(raw, "sets", where)))
    _unique([s.name for s in sets], where, "sets: name")
    protocols = _protocols(raw.get("protocols"), where)
    grid = _grid(raw.get("grid", {}), where)
    select = _select(raw.get("select"), grid, dataset, where)
    scores = _scores(raw.get("scores"), protocols, sets, dataset, where)
    sweep = Sweep(path=str(where), root=str(base / _typed(root, str, where, "root")) if root is not None else None,
                  dataset=dataset, val=val, seeds=seeds, students=students, teachers=teachers, sets=sets,
                  protocols=protocols, grid=grid, select=select, overrides=top, parallel_seeds=parallel,
                  data_root=data_root, max_runs=max_runs, scores=scores)
    check_size(sweep)
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
            raise RD3Error(f"{where}: dataset {dataset!r} is not a dataset name ({', '.join(BUILTIN)}); for a "
                           "folder write val = \"FOLDER\"")
        return dataset, None
    return None, str(_path(base, _typed(val, str, where, "val"), where, "val", folder=True))


def _data_root(raw: dict[str, Any], dataset: str | None, base: Path, where: Path) -> str | None:
    """data_root = "DIR" (relative to the TOML's folder), else $RD3FAST_DATA; checked now against the
    dataset, so a sweep whose data is not where it says fails before anything is planned."""
    value = raw.get("data_root")
    if value is not None and dataset is None:
        raise RD3Error(f"{where}: data_root is where dataset = \"NAME\" lies; this sweep names val = \"FOLDER\"")
    folder = str(_path(base, _typed(value, str, where, "data_root"), where, "data_root", folder=True)) \
        if value is not None else None
    if dataset is not None:
        try:
            locate(dataset, folder)
        except RD3Error as e:
            raise RD3Error(f"{where}: {e}".replace("--data-root", "data_root")) from None
    return folder


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
        if key in PATH_KEYS and out[key] is not None and out[key] not in BUILTIN:  # zca_train may name a dataset
            out[key] = str((where.parent / Path(out[key]).expanduser()).absolute())
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
        raise RD3Error(f"{where}: [select] carves its held-out split from a dataset's training split; set dataset = "
                       f"\"NAME\" ({', '.join(BUILTIN)})")
    k = BUILTIN[dataset].num_classes
    if size < k or size % k or not 0 <= seed < config_mod.SEED_LIMIT:
        raise RD3Error(f"{where}: [select] size = {size}, seed = {seed}: the size must be a positive multiple of "
                       f"{dataset}'s {k} classes, the seed in [0, 2**32)")
    return Select(tuple(keys), mode, size, seed)


def _scores(raw: Any, protocols: tuple[Protocol, ...], sets: tuple[SetSpec, ...], dataset: str | None,
            where: Path) -> Scores:
    """[scores]: which scores, their weights, and what the runs they add look like; checked here, so a sweep
    whose scores cannot be computed fails before anything is planned."""
    if raw is None:
        return Scores()
    if not isinstance(raw, dict):
        raise RD3Error(f"{where}: scores must be a table: [scores] then lrs = true, ars = true")
    _known(raw, SCORE_KEYS, where, "[scores]")
    flags = {k: _typed(raw.get(k, False), bool, where, f"[scores] {k}") for k in ("lrs", "ars", "use_aug_for_hard")}
    weights = {}
    for key in ("lrs_weight", "ars_weight"):
        w = raw.get(key, 0.5)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
            raise RD3Error(f"{where}: [scores] {key} = {w!r}: expected a number in [0, 1] (DD-Ranking's default 0.5)")
        weights[key] = float(w)
    names = [p.name for p in protocols]
    default = next((p.name for p in protocols if p.preset != OWN), names[0])
    protocol = _typed(raw.get("protocol", default), str, where, "[scores] protocol")
    if protocol not in names:
        raise RD3Error(f"{where}: [scores] protocol = {protocol!r} is not a protocol of this sweep; expected one of "
                       f"{', '.join(names)} (its recipe, with CE on hard labels, trains the hard-label runs)")
    naug = _typed(raw.get("naug", "all"), str, where, "[scores] naug")
    if naug not in NAUG_LEVELS:
        raise RD3Error(f"{where}: [scores] naug = {naug!r}: expected all (every augmentation off) or mix (only "
                       "CutMix/Mixup/DSA off, as DD-Ranking's aug_robust.py)")
    units = _typed(raw.get("units", "fraction"), str, where, "[scores] units")
    if units not in SCORE_UNITS:
        raise RD3Error(f"{where}: [scores] units = {units!r}: expected fraction (DD-Ranking's documented formula) "
                       "or percent (its released code)")
    real_hard = raw.get("real_hard")
    if real_hard is not None and (isinstance(real_hard, bool) or not isinstance(real_hard, (int, float))
                                  or not 0 < real_hard <= 100):
        raise RD3Error(f"{where}: [scores] real_hard = {real_hard!r}: expected the real-hard top-1 in percent, e.g. "
                       "56.5 (or leave it out to train the reference runs)")
    real = raw.get("real", {})
    if not isinstance(real, dict):
        raise RD3Error(f"{where}: [scores] real must be a table: [scores.real] then Config keys (e.g. epochs = 30)")
    real = _overrides(real, where, "[scores.real]")
    scores = Scores(lrs=flags["lrs"], ars=flags["ars"], use_aug_for_hard=flags["use_aug_for_hard"], protocol=protocol,
                    naug=naug, units=units, real_hard=None if real_hard is None else float(real_hard), real=real,
                    **weights)
    if not scores.on:
        return scores
    if not any(s.baseline for s in sets):
        raise RD3Error(f"{where}: [scores] needs a random-real baseline among the [[sets]] (method = \"random-real\"): "
                       "IOR and ARS are improvements over it")
    if scores.lrs and real_hard is None:
        if dataset is None:
            raise RD3Error(f"{where}: [scores] lrs: the real-hard reference trains on a dataset's training split; "
                           "this sweep names val = \"FOLDER\": set dataset = \"NAME\" or give real_hard = <top-1 %>")
        if dataset in STREAMED_SETS:  # too large to hold: the reference is given as a number
            raise RD3Error(f"{where}: [scores] lrs on {dataset}: its training split is not held in memory for the "
                           "real-hard reference; give its top-1 as real_hard = <percent> (DD-Ranking uses 56.5 for "
                           "ResNet-18-BN)")
    elif real and real_hard is not None:
        raise RD3Error(f"{where}: [scores.real] configures the real-hard runs, which real_hard = {real_hard} replaces; "
                       "drop one")
    return scores
