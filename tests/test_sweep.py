"""Benchmark sweeps (rd3fast.bench.plan, python -m rd3fast.bench): the TOML schema and its errors, run identity,
grouping, and tiny sweeps end to end on digits through the local executor: files written, nothing
recomputed on a rerun, failed runs recorded and retried on request, held-out selection, interruption."""
from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch

from rd3fast.bench import __main__ as bench
from rd3fast.bench import default_sweep, estimate, store, sweepfile
from rd3fast.bench import plan as sweep
from rd3fast.bench.group import run_group
from rd3fast.data import datasets
from rd3fast.data.sets import load_real, write_image_folder
from rd3fast.engine import train as training
from rd3fast.engine.checkpoint import Interrupted
from rd3fast.engine.models import build_model, save_weights
from rd3fast.errors import RD3Error
from rd3fast.methods.coreset import random_real
from tests.test_resume import StopAfter

ARCH = "convnet-d2-w8"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A random-init teacher (a sweep's bookkeeping does not need a good one) and three real subsets of
    digits: two of IPC 2 and one of IPC 3."""
    base = tmp_path_factory.mktemp("sweep-inputs")
    torch.manual_seed(0)
    save_weights(base / "teacher.pt", build_model(ARCH, 10, 16), ARCH, num_classes=10, image_size=16)
    real = load_real("digits", "train")
    for name, ipc, seed in (("random", 2, 0), ("other", 2, 1), ("big", 3, 2)):
        write_image_folder(random_real(real, ipc, seed=seed), base / "syn" / name)
    return base


SETS = {"random": "random-real", "other": "rded", "big": "rded"}


def toml_text(sets=("random", "other"), protocols='[protocols.rd3-small]\n[protocols.own]\nsmall = true\n',
              top="", grid="", seeds="[0, 1]"):
    blocks = "".join(f'[[sets]]\nname = "{s}"\npath = "syn/{s}"\nmethod = "{SETS[s]}"\nipc = 2\n' for s in sets)
    return (f'root = "out"\ndataset = "digits"\nseeds = {seeds}\nstudents = ["{ARCH}"]\nepochs = 2\n{top}\n'
            f'[[teachers]]\narch = "{ARCH}"\nweights = "teacher.pt"\n{blocks}{protocols}{grid}')


def write_sweep(folder, text, name="s.toml"):
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def work(inputs, tmp_path):
    """A fresh folder with the inputs (copied with their mtimes: the sets' fingerprints stay the same)."""
    for item in ("teacher.pt", "syn"):
        (shutil.copytree if item == "syn" else shutil.copy2)(inputs / item, tmp_path / item)
    return tmp_path


@pytest.fixture
def counted(monkeypatch):
    """Counts the groups trained (calls of train.train_seeds) and the runs in them."""
    calls = []
    real = training.train_seeds

    def train_seeds(exp, seeds, **kw):
        calls.append(list(seeds))
        return real(exp, seeds, **kw)

    monkeypatch.setattr(training, "train_seeds", train_seeds)
    return calls


def test_estimate_times_the_engines_own_step_per_group(work, monkeypatch):
    """The cost estimate times ``engine.train.time_step`` (the step the group trains with: augmentation,
    teacher, K students at once) once per group setup, with the group's K, on the run's config; the
    estimate sums steps x that time over the groups (K runs share a step), not over the runs."""
    calls = []
    real = training.time_step

    def time_step(exp, k, **kw):
        calls.append((exp.cfg.student, exp.cfg.batch_size, k, exp.relabeler is not None))
        return real(exp, k, warmup=1, repeats=1) * 0 + 1.0  # the real step ran; one second per step counted

    monkeypatch.setattr(training, "time_step", time_step)
    plan = sweep.build_plan(sweepfile.load_sweep(write_sweep(work, toml_text())), 3)
    pending = sweep.distinct(plan.runs)
    text = estimate.estimate_cost(plan, pending)
    group_steps = sum(estimate.run_steps(g.runs[0].config, g.runs[0].images) for g in plan.groups)
    assert group_steps < sum(estimate.run_steps(r.config, r.images) for r in pending)  # K share a step
    assert {k for _, _, k, _ in calls} <= {len(g.runs) for g in plan.groups} and len(calls) >= 1
    assert all(student == ARCH and teacher for student, _, _, teacher in calls)
    seconds = float(text.split("about ")[1].split(" s ")[0])
    assert group_steps <= seconds < group_steps + 60 and f"{ARCH} x 3" in text, text


# ---------------------------------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("epochs = 2", "epoch = 2"), "unknown key 'epoch' in the top level"),
    (lambda t: t.replace('method = "rded"', 'method = "rded"\nipcs = 2'), "unknown key 'ipcs' in [[sets]] #2"),
    (lambda t: t.replace('path = "syn/other"', 'path = "syn/missing"'), "syn/missing does not exist"),
    (lambda t: t.replace('method = "rded"', 'method = "mystery"'), "method 'mystery' has no preset of its own"),
    (lambda t: t.replace("epochs = 2", 'student = "resnet18"'), "write it as students (top level)"),
    (lambda t: t.replace("[protocols.rd3-small]", "[protocols.rd3-small]\nsmall = true"), "small applies to"),
    (lambda t: t.replace("[protocols.rd3-small]", "[protocols.fast]"), "unknown preset 'fast'"),
    (lambda t: t.replace("epochs = 2", "epochs = true"), "epochs"),
    (lambda t: t + '[grid]\nlr = [1e-3]\n[select]\nkeys = ["wd"]\n', "[select] key 'wd' has no [grid] values"),
    (lambda t: t + "[grid]\nlr = [1e-3]\n[select]\nsize = 55\n", "positive multiple of digits's 10 classes"),
    (lambda t: t.replace('dataset = "digits"', 'dataset = "digits"\nval = "syn"'), "exactly one validation set"),
    (lambda t: t.replace("epochs = 2", "epochs = 2\nlr = -1"), "--lr: expected a value > 0"),
    (lambda t: t.replace("seeds = [0, 1]", "seeds = [0, 0]"), "seed 0 is given more than once"),
    (lambda t: t + "[grid\n", "not valid TOML"),
])
def test_sweep_errors_are_one_line_naming_the_key(work, edit, message):
    path = write_sweep(work, edit(toml_text()))
    with pytest.raises(RD3Error) as e:
        sweep.build_plan(sweepfile.load_sweep(path))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_bad_sweep_is_one_line_and_status_2(work, capsys):
    path = write_sweep(work, toml_text().replace("epochs = 2", "epoch = 2"))
    assert bench.main([str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rd3fast: error:") and "'epoch'" in err[0]
    assert not (work / "out").exists()  # nothing written


def test_protocols_resolve_and_paths_are_relative_to_the_toml(work):
    s = sweepfile.load_sweep(write_sweep(work, toml_text()))
    assert s.root == str(work / "out") and s.sets[0].path == str(work / "syn" / "random")
    assert s.sets[0].baseline and not s.sets[1].baseline  # random-real is the IOR baseline
    own = s.protocols[1]
    assert own.preset_for("random-real") == "rd3-small" and own.preset_for("rded") == "rded-small"
    assert sweepfile.Protocol("own", "own").preset_for("sre2l") == "sre2l"
    assert sweepfile.Protocol("own", "own", small=True).preset_for("sre2l") == "sre2l-cifar"
    plan = sweep.build_plan(s)
    # random-real under `own` is rd3-small: the same runs as under rd3-small, trained once
    assert len(plan.runs) == 8 and len(sweep.distinct(plan.runs)) == 6
    assert {r.preset for r in plan.runs if r.set.name == "other"} == {"rd3-small", "rded-small"}
    assert all(r.config.epochs == 2 and r.config.seeds == (r.seed,) for r in plan.runs)


# ---------------------------------------------------------------------------------------------------
# Identity and grouping
# ---------------------------------------------------------------------------------------------------
def ids(work, text=None, k=None):
    return [r.id for r in sweep.build_plan(sweepfile.load_sweep(write_sweep(work, text or toml_text())), k).runs]


def test_run_ids_are_stable_and_follow_what_the_numbers_depend_on(work):
    first = ids(work)
    assert ids(work) == first and len(set(first)) == 6
    assert ids(work, k=2) == first  # K at once does not change a run's numbers
    assert not set(ids(work, toml_text().replace("epochs = 2", "epochs = 3"))) & set(first)
    # a set's file touched (its mtime only): the same content, the same runs
    png = next((work / "syn" / "other").rglob("*.png"))
    os.utime(png, ns=(png.stat().st_atime_ns, png.stat().st_mtime_ns + 10**9))
    assert ids(work) == first
    # a set's file changed (its content): that set's runs only
    other = next(p for p in (work / "syn" / "random").rglob("*.png"))
    png.write_bytes(other.read_bytes())
    touched = ids(work)
    assert [a == b for a, b in zip(first, touched)] == [r == "random" for r in ("random",) * 4 + ("other",) * 4]
    # other teacher weights: every run
    torch.manual_seed(1)
    save_weights(work / "teacher.pt", build_model(ARCH, 10, 16), ARCH, num_classes=10, image_size=16)
    assert not set(ids(work)) & set(touched)


def test_runs_are_grouped_k_at_once_by_config_and_set_size(work):
    text = toml_text(sets=("random", "other", "big"), seeds="[0, 1, 2]")
    plan = sweep.build_plan(sweepfile.load_sweep(write_sweep(work, text)), 3)
    for g in plan.groups:
        assert 1 <= len(g.runs) <= 3
        assert len({r.images for r in g.runs}) == 1
        assert len({json.dumps({k: v for k, v in r.config.to_dict().items() if k not in ("seeds", "distilled")},
                               sort_keys=True) for r in g.runs}) == 1
    assert sorted(len(g.runs) for g in plan.groups) == [3, 3, 3, 3, 3]  # rd3-small: 2x IPC 2 + big; own: 2 rded
    assert {r.id for g in plan.groups for r in g.runs} == {r.id for r in plan.runs}
    six = sweep.build_plan(sweepfile.load_sweep(write_sweep(work, text)), 6)
    assert sorted(len(g.runs) for g in six.groups) == [3, 3, 3, 6]  # both IPC-2 sets' seeds together


def test_dry_run_prints_the_plan_and_cost_and_writes_nothing(work, capsys):
    path = write_sweep(work, toml_text())
    assert bench.main([str(path), "--dry-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| random | own (rd3-small) |" in out and "8 runs (2 of them shared" in out
    assert "estimated cost: 6 runs to train, 12 steps" in out and "ms/step" in out
    assert not (work / "out").exists()


# ---------------------------------------------------------------------------------------------------
# Sweeps end to end (local executor, in this process)
# ---------------------------------------------------------------------------------------------------
def results(root):
    return {p.parent.name: json.loads(p.read_text()) for p in (root / "runs").glob("*/results.json")}


def test_sweep_end_to_end_rerun_failures_and_retry(work, counted, capsys):
    grid = "[grid]\nlr = [1e30, 1e-3]\n"  # lr 1e30: the loss goes non-finite, the run fails, the sweep goes on
    path, root = write_sweep(work, toml_text(grid=grid)), work / "out"
    assert bench.main([str(path), "--no-progress", "--parallel-seeds", "4"]) == 3
    out, err = capsys.readouterr()
    plan = json.loads((root / "plan.json").read_text())
    distinct = {r["id"] for r in plan["runs"]}
    assert len(plan["runs"]) == 16 and len(distinct) == 12 and plan["protocols"] == ["rd3-small", "own"]
    assert {rid for g in plan["groups"] for rid in g["runs"]} == distinct
    for rid in distinct:
        info = json.loads((root / "runs" / rid / "run.json").read_text())
        assert info["id"] == rid and info["set"]["images"] == 20 and info["teachers"][0]["sha256"]
    recs = results(root)
    assert set(recs) == distinct
    failed = {rid for rid, r in recs.items() if r["status"] == "failed"}
    assert len(failed) == 6 and all("non-finite training loss" in recs[f]["error"] for f in failed)
    assert all(json.loads((root / "runs" / f / "run.json").read_text())["grid"] == {"lr": 1e30} for f in failed)
    for rid, r in recs.items():
        if rid not in failed:
            assert r["run"]["last_top1"] is not None and r["run"]["images_per_s"] > 0 and r["wall_s"] > 0
            assert r["group"]["k"] in (2, 4) and r["group"]["device"].startswith("cpu")
    assert len(counted) == 4 and sum(map(len, counted)) == 12
    assert len(err.strip().splitlines()) == 6 and all("failed: failed at epoch" in line for line in err.splitlines())
    assert "Leaderboard" in out and (root / "leaderboard.md").is_file() and (root / "leaderboard.csv").is_file()
    assert not (root / "groups").exists()  # checkpoints discarded once the results were written

    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*.json")}
    counted.clear()
    assert bench.main([str(path), "--no-progress", "--parallel-seeds", "4"]) == 3  # the failures stay failures
    assert counted == [] and "nothing to train" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p.name != "plan.json")

    assert bench.main([str(path), "--no-progress", "--parallel-seeds", "4", "--retry-failed"]) == 3
    assert sum(map(len, counted)) == 6  # only the failed runs, again
    assert {rid for rid, r in results(root).items() if r["status"] == "failed"} == failed

    # a half-finished ROOT reports what is there and marks the rest
    ok = next(rid for rid in distinct - failed)
    (root / "runs" / ok / "results.json").unlink()
    capsys.readouterr()
    assert bench.main(["report", str(root)]) == 0
    assert "Leaderboard" in capsys.readouterr().out and (root / "leaderboard.png").is_file()
    assert store.status(root, ok) == "pending"


def test_heldout_selection_records_both_accuracies(work):
    from rd3fast.bench import board as leaderboard

    select = "[grid]\nlr = [1e-4, 3e-3]\n[select]\nkeys = [\"lr\"]\nmode = \"heldout\"\nsize = 50\nseed = 0\n"
    path, root = write_sweep(work, toml_text(sets=("other",), protocols="[protocols.rd3-small]\n", grid=select,
                                             seeds="[0]")), work / "out"
    assert bench.main([str(path), "--no-progress"]) == 0
    recs = results(root)
    assert len(recs) == 2
    for r in recs.values():
        assert r["run"]["last_heldout_top1"] is not None and r["run"]["last_top1"] is not None
        assert all("heldout_top1" in e for e in r["run"]["evals"])
    infos = {rid: json.loads((root / "runs" / rid / "run.json").read_text()) for rid in recs}
    assert all(i["heldout"] == {"size": 50, "seed": 0} for i in infos.values())
    top = max(r["run"]["last_heldout_top1"] for r in recs.values())  # one seed: its value is the mean
    [cell] = leaderboard.load(root).cells.values()
    [chosen] = [r.id for r in cell.chosen]  # on a tie, the first grid value: either may be the best
    assert cell.heldout == top and recs[chosen]["run"]["last_heldout_top1"] == top
    assert cell.choice == infos[chosen]["grid"]
    # the held-out split is part of a run's identity: without [select] these are other runs
    assert not set(ids(work, toml_text(sets=("other",), protocols="[protocols.rd3-small]\n",
                                       grid="[grid]\nlr = [1e-4, 3e-3]\n", seeds="[0]"))) & set(recs)


def test_interrupted_group_resumes_from_its_checkpoint(work, counted):
    plan = sweep.build_plan(sweepfile.load_sweep(write_sweep(work, toml_text(sets=("random",),
                                                                         protocols="[protocols.rd3-small]\n"))), 2)
    root, [group] = work / "out", plan.groups
    with pytest.raises(Interrupted) as e:
        run_group(root, group, progress=False, stop=StopAfter(1))
    assert e.value.exit_code == 143 and e.value.resumable
    assert (root / "groups" / group.key / "checkpoint.pt").is_file() and results(root) == {}
    recs = run_group(root, group, progress=False)
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs)
    assert all(any("resumed from a checkpoint" in n for n in r["run"]["notes"]) for r in recs)
    assert not (root / "groups" / group.key / "checkpoint.pt").exists()
    assert len(counted) == 2


def test_signal_exits_128_plus_signal_with_one_line(work, monkeypatch, capsys):
    monkeypatch.setattr(bench, "StopRequest", lambda: StopAfter(1, signal.SIGINT))
    path = write_sweep(work, toml_text(sets=("random",), protocols="[protocols.rd3-small]\n"))
    assert bench.main([str(path), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rd3fast: error: SIGINT: interrupted") and "resume" in err[0]
    assert not list((work / "out" / "runs").glob("*/results.json"))  # one group checkpointed, none started after
    monkeypatch.undo()
    assert bench.main([str(path), "--no-progress"]) == 0  # the rerun resumes and finishes
    assert all(r["status"] == "ok" for r in results(work / "out").values()) and len(results(work / "out")) == 2


def test_default_sweep_inputs_and_plan(work, monkeypatch):
    """The embedded default: what exists is not made again (here: all its inputs), and its sweep is every
    set under rd3-small and its method's own protocol, 3 seeds, the epochs shortened."""
    root = work / "default"
    (root / "syn").mkdir(parents=True)
    arch, size = default_sweep.DEFAULT_TEACHER, datasets.BUILTIN[default_sweep.DEFAULT_DATASET].image_size
    # the default teacher's architecture at Fashion-MNIST's size: the plan loads every teacher it will use
    save_weights(root / "teacher.pt", build_model(arch, 10, size), arch, num_classes=10, image_size=size)
    real = load_real("digits", "train")
    for seed, name in enumerate(default_sweep.DEFAULT_SETS):  # four sets of distinct content
        write_image_folder(random_real(real, 2, seed=seed), root / "syn" / name)
    monkeypatch.setattr(default_sweep, "_pretrain_teacher", lambda *a: pytest.fail("the teacher exists"))
    monkeypatch.setattr(default_sweep, "_distill", lambda *a: pytest.fail("the sets exist"))
    toml = default_sweep.default_inputs(root, progress=False)
    mtime = toml.stat().st_mtime_ns
    assert default_sweep.default_inputs(root, progress=False) == toml and toml.stat().st_mtime_ns == mtime
    s = sweepfile.load_sweep(toml)
    assert s.root == str(root) and s.dataset == "fashion-mnist" and s.parallel_seeds == default_sweep.DEFAULT_K
    assert [p.name for p in s.protocols] == ["rd3-small", "own"] and s.seeds == (0, 1, 2)
    assert list(default_sweep.DEFAULT_SETS.values()) == ["random-real", "rded", "herding", "kcenter"]
    assert s.scores.lrs and s.scores.ars and s.scores.protocol == "rd3-small"
    plan = sweep.build_plan(s)
    by_role = {role: [r for r in plan.runs if r.role == role] for role in ("", "hard", "naug", "real")}
    # 4 sets x 2 protocols x 3 seeds, of which random-real's, herding's and kcenter's own runs are rd3-small's
    assert len(by_role[""]) == 24 and len(sweep.distinct(by_role[""])) == 15
    assert len(by_role["hard"]) == 12 and len(sweep.distinct(by_role["naug"])) == 15 and len(by_role["real"]) == 3
    assert len(plan.runs) == 63 and len(sweep.distinct(plan.runs)) == 45
    assert {r.config.epochs for r in plan.runs if r.role != "real"} == {default_sweep.DEFAULT_EPOCHS}
    assert {r.config.epochs for r in by_role["real"]} == {default_sweep.DEFAULT_REAL_EPOCHS}


def test_a_checkpoint_of_other_runs_is_discarded_not_an_error(work):
    from rd3fast.engine.checkpoint import Checkpointing

    plan = sweep.build_plan(sweepfile.load_sweep(write_sweep(work, toml_text(sets=("random",), seeds="[0]",
                                                                         protocols="[protocols.rd3-small]\n"))))
    root, [group] = work / "out", plan.groups
    Checkpointing(root / "groups" / group.key / "checkpoint.pt", identity={"runs": ["another"]}).save({"epoch": 1})
    [rec] = run_group(root, group, progress=False)
    assert rec["status"] == "ok" and not any("resumed" in n for n in rec["run"]["notes"])


def test_parallel_seeds_zero_in_the_toml_names_the_key(work):
    with pytest.raises(RD3Error, match=r"s\.toml: parallel_seeds = 0: expected an integer >= 1"):
        sweepfile.load_sweep(write_sweep(work, toml_text(top="parallel_seeds = 0")))
