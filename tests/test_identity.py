"""A run's identity covers everything that decides its number (README "Identity, ROOT and what a rerun does"):
the content of the set (an MTT folder's lr_best.pt included), the test set, the held-out split's training
split and the class map are in a sweep run's id; a soft-label cache is refused when its set changed since it
was recorded; file hashes are recomputed only when a file's stat changes. Also: an MTT folder of normalized
floats is accepted by a sweep as by ``run``, and planning is linear in the runs and bounded by ``max_runs``."""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import torch
from PIL import Image

from rd3fast import config as config_mod
from rd3fast import run
from rd3fast.bench import __main__ as bench
from rd3fast.bench import estimate, sweepfile
from rd3fast.bench import plan as sweep
from rd3fast.bench.identity import IDENTITY_FREE
from rd3fast.data import content
from rd3fast.data.pixels import normalize
from rd3fast.data.sets import BUILTIN, load_real, write_image_folder
from rd3fast.engine import train as training
from rd3fast.errors import RD3Error
from rd3fast.methods.coreset import random_real
from tests import test_sweep as sweep_tests
from tests.formats_arrays import write_mnist_raw
from tests.test_coupled import mtt_folder
from tests.test_sweep import ARCH, ids, toml_text, write_sweep

inputs, work = sweep_tests.inputs, sweep_tests.work  # test_sweep's fixtures: digits sets and a teacher

STUDENT = "convnet-d1-w8"


@pytest.fixture
def hash_cache(tmp_path, monkeypatch):
    """A fresh rd3fast cache root (the hash cache lives under it), and a count of the files hashed."""
    monkeypatch.setenv("RD3FAST_CACHE", str(tmp_path / "cache"))
    hashed = []
    real = content.hash_file

    def hash_file(path):
        hashed.append(os.path.abspath(path))
        return real(path)

    monkeypatch.setattr(content, "hash_file", hash_file)
    return hashed


def mtt_toml(protocols, top="", path="mtt"):
    return (f'root = "out"\ndataset = "digits"\nseeds = [0]\nstudents = ["{STUDENT}"]\n{top}\n'
            f'[[teachers]]\narch = "{ARCH}"\nweights = "teacher.pt"\n'
            f'[[sets]]\nname = "mtt"\npath = "{path}"\nmethod = "mtt"\nipc = 2\n{protocols}')


MTT_PROTOCOL = "[protocols.mtt]\nepochs = 2\neval_every = 2\nmilestones = [2]\n"


def results(root):
    return {p.parent.name: json.loads(p.read_text()) for p in (root / "runs").glob("*/results.json")}


# ---------------------------------------------------------------------------------------------------
# Seen stale before: lr_best.pt, the test set, a soft-label cache's set
# ---------------------------------------------------------------------------------------------------
def test_mtt_lr_best_is_part_of_the_identity_and_a_changed_lr_is_trained(work, capsys):
    """An MTT folder of normalized floats sweeps under the mtt preset (DSA: kept as stored); its lr_best.pt
    changed from 0.01 to 0.05 is a new run, trained with 0.05, not "nothing to train" with 0.01 kept."""
    mtt_folder(work / "mtt", lr=0.01)
    path, root = write_sweep(work, mtt_toml(MTT_PROTOCOL)), work / "out"
    assert bench.main([str(path), "--no-progress"]) == 0
    [(first, rec)] = results(root).items()
    assert rec["status"] == "ok" and any("lr 0.01 from the set" in n for n in rec["run"]["notes"])
    capsys.readouterr()

    torch.save(torch.tensor(0.05), work / "mtt" / "lr_best.pt")
    assert bench.main([str(path), "--no-progress"]) == 0
    assert "nothing to train" not in capsys.readouterr().out
    recs = results(root)
    [second] = set(recs) - {first}
    assert any("lr 0.05 from the set" in n for n in recs[second]["run"]["notes"])


def normalized_mtt_folder(root, per_class=2):
    """images_best.pt as MTT saves them without ZCA (normalized with digits' mean/std, exact pixels), hard labels."""
    real = load_real("digits", "train")
    picks = torch.cat([torch.nonzero(real.labels == c).flatten()[:per_class] for c in range(10)])
    root.mkdir(parents=True, exist_ok=True)
    torch.save(normalize(real.images[picks].expand(-1, 3, -1, -1).float(), BUILTIN["digits"].mean,
                         BUILTIN["digits"].std), root / "images_best.pt")
    torch.save(real.labels[picks], root / "labels_best.pt")
    return root


def test_sweep_takes_a_normalized_mtt_folder_with_the_keys_run_takes(work):
    """Accepted at plan time with mean/std at the top level (as `run --mean/--std`) or under --aug dsa, and
    refused without them under the standard pipeline with run's own message, naming the set and protocol."""
    normalized_mtt_folder(work / "mtt")
    mean, std = (", ".join(map(str, BUILTIN["digits"].mean)), ", ".join(map(str, BUILTIN["digits"].std)))
    plan = sweep.build_plan(sweepfile.load_sweep(write_sweep(
        work, mtt_toml("[protocols.rd3-small]\n", top=f"mean = [{mean}]\nstd = [{std}]\nepochs = 1"))))
    assert [r.images for r in plan.runs] == [20]
    dsa = sweep.build_plan(sweepfile.load_sweep(write_sweep(work, mtt_toml(MTT_PROTOCOL))))
    assert [r.images for r in dsa.runs] == [20]
    with pytest.raises(RD3Error) as e:
        sweep.build_plan(sweepfile.load_sweep(write_sweep(work, mtt_toml("[protocols.rd3-small]\n"))))
    message = str(e.value)
    assert "'mtt'" in message and "rd3-small" in message and "--mean/--std" in message and "\n" not in message


def val_folder(root, per_class=3, seed=0):
    write_image_folder(random_real(load_real("digits", "val"), per_class, seed=seed), root)
    return root


def test_test_set_folder_is_part_of_the_identity(work):
    """val = FOLDER: two class folders swapped is another test set, so other runs; the same folder copied
    elsewhere with everything else keeps every id."""
    val_folder(work / "val")
    text = toml_text().replace('dataset = "digits"', 'val = "val"')
    first = ids(work, text)
    (work / "val" / "00000").rename(work / "val" / "tmp")
    (work / "val" / "00001").rename(work / "val" / "00000")
    (work / "val" / "tmp").rename(work / "val" / "00001")
    swapped = ids(work, text)
    assert not set(first) & set(swapped)

    copy = work.parent / (work.name + "-copy")
    shutil.copytree(work, copy)  # new inodes and times: hashed again, same content
    assert ids(copy, text) == swapped


def test_named_test_split_and_heldout_training_split_are_part_of_the_identity(work):
    """dataset = "mnist": its test files are in every id (the training files only with [select], where the
    held-out split is carved from them); a data root moved elsewhere keeps the ids."""
    files = write_mnist_raw(work / "data", "mnist", n_train=40, n_test=20)["folder"]
    text = toml_text(top="image_size = 16").replace('dataset = "digits"', 'dataset = "mnist"\ndata_root = "data"')
    select = text + "[grid]\nlr = [1e-3, 2e-3]\n[select]\nkeys = [\"lr\"]\nsize = 10\n"
    first, held = ids(work, text), ids(work, select)
    labels = files / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[-1] = (data[-1] + 1) % 10  # one test label changed, same size
    labels.write_bytes(bytes(data))
    changed = ids(work, text)
    assert not set(first) & set(changed)
    train = files / "train-images-idx3-ubyte"
    data = bytearray(train.read_bytes())
    data[-1] ^= 0xFF
    train.write_bytes(bytes(data))
    assert ids(work, text) == changed  # no held-out split: the training files decide nothing
    assert not set(ids(work, select)) & set(held)

    (work / "data").rename(work / "moved")
    assert ids(work, text.replace('data_root = "data"', 'data_root = "moved"')) == changed


def test_class_map_content_is_part_of_the_identity_and_paths_are_relative_to_the_toml(work):
    names = [f"{c:05d}" for c in range(10)]
    (work / "map.txt").write_text("\n".join(names) + "\n")
    text = toml_text(top='class_map = "map.txt"')
    first = ids(work, text)
    assert sweepfile.load_sweep(work / "s.toml").overrides["class_map"] == str(work / "map.txt")
    (work / "map.txt").write_text("\n".join([names[1], names[0], *names[2:]]) + "\n")
    assert not set(ids(work, text)) & set(first)


def rewrite_pngs(folder, flip):
    """Every PNG saved uncompressed (its size fixed by its shape), pixels flipped left-right when ``flip``:
    other images under the same names, sizes and count. ``flip`` also restores the files' mtimes, as a
    copy that keeps times would; only their content tells them apart."""
    for f in sorted(folder.rglob("*.png")):
        st = f.stat()
        with Image.open(f) as im:
            im = im.copy()
        (im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else im).save(f, compress_level=0)
        if flip:
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_replay_of_a_cache_whose_set_changed_is_refused(work, capsys):
    """A soft-label cache recorded for a folder whose images were then replaced (same names, sizes, count and
    mtimes) is refused with one line naming the cache folder; the unchanged set replays."""
    folder, cache = work / "syn" / "random", work / "cache"
    rewrite_pngs(folder, flip=False)
    common = ["--preset", "rd3-small", "--dataset", "digits", "--distilled", str(folder), "--teacher", ARCH,
              "--teacher-weights", str(work / "teacher.pt"), "--student", ARCH, "--epochs", "1", "--seeds", "0",
              "--no-progress", "--cache", str(cache)]
    assert run.main([*common, "--cache-mode", "record", "--out", str(work / "rec")]) == 0
    assert run.main([*common, "--cache-mode", "replay", "--out", str(work / "rep")]) == 0
    capsys.readouterr()

    sizes = {f.name: f.stat().st_size for f in folder.rglob("*.png")}
    rewrite_pngs(folder, flip=True)
    assert {f.name: f.stat().st_size for f in folder.rglob("*.png")} == sizes
    assert run.main([*common, "--cache-mode", "replay", "--out", str(work / "rep2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cache) in err[0] and "the set changed" in err[0], err
    assert not (work / "rep2").exists()


# ---------------------------------------------------------------------------------------------------
# The hashing rule
# ---------------------------------------------------------------------------------------------------
def test_a_file_is_hashed_again_only_when_its_stat_changes(tmp_path, hash_cache):
    f = tmp_path / "x.bin"
    f.write_bytes(b"a" * 1000)
    sha = content.file_sha256(f)
    assert content.file_sha256(f) == sha and content.HashCache().sha256(f) == sha  # from the cache file
    assert len(hash_cache) == 1
    st = f.stat()
    f.write_bytes(b"b" * 1000)  # same size; the mtime put back: the ctime still moves
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert content.file_sha256(f) != sha and len(hash_cache) == 2
    g = tmp_path / "y.bin"
    shutil.copy2(f, g)  # a copy with the same times: another inode, hashed, same content
    assert content.file_sha256(g) == content.file_sha256(f) and len(hash_cache) == 3


def test_an_unwritable_hash_cache_recomputes(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("not a folder")  # nothing can be written under it
    monkeypatch.setenv("RD3FAST_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    assert content.file_sha256(f) == content.hash_file(f) == content.file_sha256(f)


def test_a_rerun_over_unchanged_inputs_hashes_nothing(work, hash_cache):
    first = ids(work)
    assert len(hash_cache) >= 20  # the sets' 40 images, the teacher and digits' file, once
    hash_cache.clear()
    assert ids(work) == first and hash_cache == []


# ---------------------------------------------------------------------------------------------------
# Identity rules
# ---------------------------------------------------------------------------------------------------
def test_identity_free_keys_are_replaced_by_content():
    """Each key left out of the id as written is one that changes no number or whose content is hashed."""
    assert set(IDENTITY_FREE) == {"parallel_seeds", "val_cache", "distilled", "val", "data_root", "teacher_weights",
                                  "class_map", "zca_train"}


def test_run_configs_equal_config_resolve(work):
    """The plan builds each run's Config in one step; it is the one config.resolve makes (lr given under a
    preset that takes it from the set included)."""
    mtt_folder(work / "mtt", lr=0.01)
    text = toml_text(grid="[grid]\nlr = [1e-3, 2e-3]\ntemperature = [4.0]\n")
    text = text.replace("[protocols.rd3-small]", "[protocols.mtt-lr]\npreset = \"mtt\"\n[protocols.rd3-small]")
    s = sweepfile.load_sweep(write_sweep(work, text))
    plan = sweep.build_plan(s)
    assert plan.runs
    for r in plan.runs:
        proto = next(p for p in s.protocols if p.name == r.protocol)
        fixed = dict(distilled=r.set.path, dataset=s.dataset, data_root=s.data_root, val=s.val, student=r.student,
                     seeds=(r.seed,), teacher=tuple(t.arch for t in s.teachers),
                     teacher_weights=tuple(t.weights for t in s.teachers), parallel_seeds=1)
        expected = config_mod.resolve(proto.preset_for(r.set.method),
                                      overrides={**s.overrides, **proto.overrides, **r.grid, **fixed})
        assert r.config == expected and r.config.to_dict() == expected.to_dict()
    assert any(r.preset == "mtt" and r.config.lr_from_set is False for r in plan.runs)


# ---------------------------------------------------------------------------------------------------
# Bounded planning
# ---------------------------------------------------------------------------------------------------
def grid_of(n_lr, n_wd):
    lrs = ", ".join(f"{1e-4 * (i + 1):.6g}" for i in range(n_lr))
    wds = ", ".join(f"{1e-4 * (i + 1):.6g}" for i in range(n_wd))
    return f"[grid]\nlr = [{lrs}]\nweight_decay = [{wds}]\n"


def test_a_grid_above_max_runs_is_refused_at_once_naming_the_key(work, monkeypatch, capsys):
    monkeypatch.setattr(content, "hash_file", lambda p: pytest.fail("nothing is hashed for a refused grid"))
    path = write_sweep(work, toml_text(sets=("random",), protocols="[protocols.rd3-small]\n", seeds="[0]",
                                       grid=grid_of(400, 300)))
    t0 = time.perf_counter()
    with pytest.raises(RD3Error) as e:
        sweepfile.load_sweep(path)
    assert time.perf_counter() - t0 < 10
    assert "120,000 runs" in str(e.value) and "max_runs = 120000 at the top level" in str(e.value)
    assert bench.main([str(path), "--dry-run", "--no-progress"]) == 2
    assert "max_runs" in capsys.readouterr().err and not (work / "out").exists()
    # the key raises (or lowers) the limit
    assert sweepfile.load_sweep(write_sweep(work, toml_text(top="max_runs = 120000"))).max_runs == 120_000
    with pytest.raises(RD3Error, match="max_runs = 7"):
        sweepfile.load_sweep(write_sweep(work, toml_text(top="max_runs = 7")))


def test_planning_ten_thousand_runs_is_linear(work, monkeypatch, hash_cache):
    """10^4 runs (a 100 x 100 grid): each grid point's Config is built and checked once (and a seed costs no
    check at all), each input file is hashed once, the table prints its first rows and the cost estimate
    times the engine's step once (lr and weight decay do not change the work of a step)."""
    checks = []
    real_validate = config_mod.validate
    monkeypatch.setattr(config_mod, "validate", lambda cfg: checks.append(1) or real_validate(cfg))
    timed = []
    monkeypatch.setattr(training, "time_step", lambda exp, k, **kw: timed.append(k) or 0.001)
    path = write_sweep(work, toml_text(sets=("random",), protocols="[protocols.rd3-small]\n", seeds="[0, 1, 2]",
                                       grid=grid_of(100, 34)))
    t0 = time.perf_counter()
    plan = sweep.build_plan(sweepfile.load_sweep(path), 3)
    elapsed = time.perf_counter() - t0
    assert len(plan.runs) == 10_200 and len(plan.groups) == 3_400
    assert len(checks) <= 3_400 + 20, len(checks)  # one per grid point (+ the seeds' and presets' checks)
    assert len(hash_cache) <= 30  # 20 images, the teacher, the test set's file: once each
    assert elapsed < 120, elapsed  # about 2 s on an idle 2-core CPU; generous for a loaded one
    text = estimate.plan_summary(plan, work / "out")
    assert len(text.splitlines()) < estimate.MAX_ROWS + 20 and "more rows" in text
    assert timed == [3]  # one setup timed, K = 3


def test_large_plans_say_so(work, capsys, monkeypatch):
    """From PROGRESS_FROM runs, planning prints one line on stderr first (and a bar on a terminal)."""
    path = write_sweep(work, toml_text(sets=("random",), protocols="[protocols.rd3-small]\n", seeds="[0]",
                                       grid=grid_of(10, 10)))
    s = sweepfile.load_sweep(path)
    sweep.build_plan(s)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sweep, "PROGRESS_FROM", 50)
    sweep.build_plan(s)
    assert capsys.readouterr().err.strip() == "rd3fast bench: planning 100 runs"
