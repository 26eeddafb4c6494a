"""The executors: every group runs once, a failing group is recorded and the others go on, and the Ray
executor (a local Ray with 2 CPUs, as CI has) gives the same outcomes as running in this process and
re-runs a group whose worker process was killed."""
from __future__ import annotations

import functools
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rd3fast.bench import executors
from rd3fast.bench.executors import Outcome, run_groups
from rd3fast.errors import RD3Error

pytestmark = pytest.mark.serial  # starts a local Ray cluster sized to the machine and kills its workers


@dataclass(frozen=True)
class FakeGroup:
    """What run_groups needs of a sweep.Group: a key (and runs, for the function)."""

    key: str
    runs: tuple[str, ...]


GROUPS = [FakeGroup("g0", ("a", "b")), FakeGroup("bad", ("c",)), FakeGroup("g2", ("d", "e", "f")),
          FakeGroup("g3", ("g",))]


def write_group(out: Path, group: FakeGroup) -> dict:
    """A real small group function: one file per group, a value back; the group "bad" raises."""
    if group.key == "bad":
        raise ValueError(f"group {group.key}: cannot train {len(group.runs)} run")
    (out / f"{group.key}.txt").write_text(",".join(group.runs))
    return {"key": group.key, "runs": list(group.runs), "n": len(group.runs)}


def die_once(out: Path, group: FakeGroup) -> str:
    """Kill the worker process itself the first time (a marker file remembers), succeed the next."""
    with open(out / f"{group.key}.attempts", "a") as f:
        f.write(f"{os.getpid()}\n")
    marker = out / f"{group.key}.died"
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return f"{group.key} done"


def expected(out: Path) -> list[Outcome]:
    return [Outcome("g0", "ok", None, {"key": "g0", "runs": ["a", "b"], "n": 2}),
            Outcome("bad", "failed", "ValueError: group bad: cannot train 1 run"),
            Outcome("g2", "ok", None, {"key": "g2", "runs": ["d", "e", "f"], "n": 3}),
            Outcome("g3", "ok", None, {"key": "g3", "runs": ["g"], "n": 1})]


def check_files(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["g0.txt", "g2.txt", "g3.txt"]
    assert (out / "g2.txt").read_text() == "d,e,f"


def test_local_runs_every_group_in_order(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    outcomes = run_groups(functools.partial(write_group, tmp_path), GROUPS)
    assert outcomes == expected(tmp_path)
    assert outcomes[1].traceback and "ValueError" in outcomes[1].traceback
    check_files(tmp_path)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[1/4] group g0 ok in ") and err[1] == "[2/4] group bad failed: " + outcomes[1].error
    assert err[2] == "Traceback (most recent call last):" and err[-1].startswith("[4/4] group g3 ok in ")
    assert run_groups(functools.partial(write_group, tmp_path), GROUPS, progress=False) == outcomes
    assert capsys.readouterr().err == ""
    rd3 = run_groups(lambda g: (_ for _ in ()).throw(RD3Error(f"{g.key}: bad input")), GROUPS[:1], progress=False)
    assert rd3 == [Outcome("g0", "failed", "g0: bad input")]  # RD3Error's message is already user-facing


def test_bad_arguments() -> None:
    with pytest.raises(RD3Error, match="--executor 'slurm': expected one of local, ray"):
        run_groups(print, GROUPS, "slurm")
    with pytest.raises(RD3Error, match="--address auto: only used with --executor ray"):
        run_groups(print, GROUPS, "local", "auto")


def test_ray_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RD3Error) as e:
        run_groups(print, GROUPS, "ray")
    assert str(e.value) == "--executor ray: ray is not installed; pip install 'rd3fast[ray]'"


def test_ray_address_that_does_not_answer() -> None:
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RD3Error, match=f"--address 127.0.0.1:{port}: no Ray head answers there"):
        run_groups(print, GROUPS, "ray", f"127.0.0.1:{port}")


# ---- Ray: a local instance with 2 CPUs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_module():
    ray = pytest.importorskip("ray")
    # This test module is not importable in Ray's workers (pytest put tests/ on this process's sys.path
    # only): ship its functions and classes by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def ray_cluster(ray_module):
    """One local Ray (2 CPUs) shared by the tests below; run_groups joins it and leaves it running."""
    ray_module.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray_module
    ray_module.shutdown()


def test_ray_same_outcomes_as_local(ray_module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    """run_groups starts its own local Ray (sized to the machine: 2 CPUs here) and shuts it down."""
    assert not ray_module.is_initialized()
    monkeypatch.setattr(executors, "local_cpus", lambda: 2)
    local, remote = tmp_path / "local", tmp_path / "ray"
    local.mkdir(), remote.mkdir()
    outcomes = run_groups(functools.partial(write_group, remote), GROUPS, "ray")
    assert not ray_module.is_initialized()
    assert outcomes == run_groups(functools.partial(write_group, local), GROUPS, "local") == expected(remote)
    check_files(remote)
    lines = [s for s in capsys.readouterr().err.splitlines() if s.startswith("[")][:4]  # Ray's, as they finish
    assert [s.split("]")[0] for s in lines] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert any(s.endswith("] group bad failed: ValueError: group bad: cannot train 1 run") for s in lines)


def test_ray_reruns_a_killed_worker(ray_cluster, tmp_path: Path) -> None:
    groups = [FakeGroup("k0", ("a",)), FakeGroup("k1", ("b",))]
    outcomes = run_groups(functools.partial(die_once, tmp_path), groups, "ray", progress=False)
    assert ray_cluster.is_initialized()  # joined, not started: left running
    assert outcomes == [Outcome("k0", "ok", None, "k0 done"), Outcome("k1", "ok", None, "k1 done")]
    for g in groups:  # killed once, then re-run in a new worker process
        pids = (tmp_path / f"{g.key}.attempts").read_text().split()
        assert len(pids) == 2 and pids[0] != pids[1]


def test_ray_gives_up_after_max_retries(ray_cluster, tmp_path: Path) -> None:
    outcomes = run_groups(functools.partial(die_once, tmp_path), [FakeGroup("k", ())], "ray", max_retries=0,
                          progress=False)
    assert outcomes[0].status == "failed" and outcomes[0].error.startswith("ray: WorkerCrashedError (after 0 retries)")


def test_ray_reports_a_function_its_workers_cannot_import(ray_cluster, tmp_path: Path) -> None:
    module = sys.modules[__name__]
    ray_cluster.cloudpickle.unregister_pickle_by_value(module)  # test_executors: not importable there
    try:
        outcomes = run_groups(functools.partial(write_group, tmp_path), GROUPS[:1], "ray", progress=False)
    finally:
        ray_cluster.cloudpickle.register_pickle_by_value(module)
    assert outcomes[0].status == "failed"
    assert outcomes[0].error.startswith("ray: ModuleNotFoundError: No module named ")  # this test module
    assert outcomes[0].error.endswith("(Ray workers import the group function from their own Python environment: "
                                      "install rd3fast there)")


# ---- End to end: a tiny digits sweep (rd3fast.bench.group.run_group) locally and on Ray -------------------

SWEEP = """
dataset = "digits"
seeds = [0, 1]
students = ["convnet-d2-w8"]
epochs = 4
batch_size = 10
eval_every = 1

[[teachers]]
arch = "convnet-d2-w8"
weights = "teacher.pt"

[[sets]]
name = "random-ipc3"
path = "random_ipc3"
method = "random-real"
ipc = 3

[protocols.rd3-small]
preset = "rd3-small"
"""


@pytest.fixture(scope="module")
def digits_sweep(tmp_path_factory):
    """A teacher pre-trained 1 epoch, a random IPC-3 set, and the plan of a 2-seed sweep over them in two
    groups (K = 1: one per seed), so that Ray runs them side by side."""
    from rd3fast import distill, pretrain
    from rd3fast.bench import plan as sweep
    from rd3fast.bench import sweepfile

    work = tmp_path_factory.mktemp("sweep")
    assert pretrain.main(["--dataset", "digits", "--arch", "convnet-d2-w8", "--epochs", "1", "--batch-size", "64",
                          "--out", str(work / "teacher.pt"), "--no-progress"]) == 0
    assert distill.main(["--method", "random", "--dataset", "digits", "--ipc", "3",
                         "--out", str(work / "random_ipc3"), "--no-progress"]) == 0
    (work / "sweep.toml").write_text(SWEEP)
    plan = sweep.build_plan(sweepfile.load_sweep(work / "sweep.toml"), parallel_seeds=1)
    assert len(plan.groups) == 2 and [len(g.runs) for g in plan.groups] == [1, 1]
    return work, plan


def sweep_group(root: Path, group, victim: str | None = None):
    """run_group, checkpointing every epoch. For the group ``victim``, the first attempt kills its own
    process when its second checkpoint is due (after epoch 2, before writing it): the rerun resumes from
    epoch 1's checkpoint and trains epoch 2 again."""
    from rd3fast.bench.group import run_group
    from rd3fast.engine.checkpoint import Checkpointing

    marker = root / f"killed-{group.key}"
    if group.key != victim or marker.exists():
        return run_group(root, group, progress=False, checkpoint_every=1)
    original, calls = Checkpointing.save, []

    def save(self, state):
        calls.append(state["epoch"])
        if len(calls) == 2:
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, state)

    Checkpointing.save = save
    try:
        return run_group(root, group, progress=False, checkpoint_every=1)
    finally:
        Checkpointing.save = original


def numbers(root: Path, plan) -> dict:
    """Per run id, what the run computed (per-epoch losses and lrs, every evaluation), without timings."""
    out = {}
    for r in plan.runs:
        rec = json.loads((root / "runs" / r.id / "results.json").read_text())
        assert rec["status"] == "ok", rec
        run = rec["run"]
        out[r.id] = ([(e["epoch"], e["loss"], e["lr"]) for e in run["epochs"]], run["evals"], run["last_top1"],
                     run["best_top1"], run["best_epoch"])
    return out


def resumed(root: Path, rid: str) -> bool:
    notes = json.loads((root / "runs" / rid / "results.json").read_text())["run"]["notes"]
    return any(n.startswith("resumed from a checkpoint at epoch 2") for n in notes)


@pytest.fixture(scope="module")
def local_numbers(digits_sweep, tmp_path_factory):
    """The sweep with the local executor, on 1 torch thread: what a Ray task of 1 CPU runs with (float
    sums over another number of threads differ in their last bits)."""
    import torch

    work, plan = digits_sweep
    root = tmp_path_factory.mktemp("local") / "root"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcomes = run_groups(functools.partial(sweep_group, root), plan.groups, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [o.status for o in outcomes] == ["ok", "ok"]
    return numbers(root, plan)


def test_sweep_on_ray_equals_local_and_a_killed_worker_loses_nothing(ray_cluster, digits_sweep, local_numbers,
                                                                     tmp_path: Path) -> None:
    """Both groups on Ray at once; the first one's worker is killed mid-group and Ray re-runs the task, which
    resumes from the group's checkpoint: every run ends with the local executor's numbers."""
    work, plan = digits_sweep
    root = tmp_path / "root"
    victim = plan.groups[0].key
    outcomes = run_groups(functools.partial(sweep_group, root, victim=victim), plan.groups, "ray", progress=False)
    assert [(o.key, o.status, o.error) for o in outcomes] == [(g.key, "ok", None) for g in plan.groups]
    assert (root / f"killed-{victim}").exists()
    assert numbers(root, plan) == local_numbers
    assert resumed(root, plan.groups[0].runs[0].id) and not resumed(root, plan.groups[1].runs[0].id)
    assert [[rec["id"] for rec in o.result] for o in outcomes] == [[r.id for r in g.runs] for g in plan.groups]


def test_sweep_rerun_after_ray_gave_up_resumes(ray_cluster, digits_sweep, local_numbers, tmp_path: Path) -> None:
    """With no retries the killed group is recorded failed and the other finishes; running the sweep again
    resumes the killed group from its checkpoint, leaves the finished one alone, and ends with the local
    numbers."""
    work, plan = digits_sweep
    root = tmp_path / "root"
    victim, other = plan.groups[0], plan.groups[1]
    first = run_groups(functools.partial(sweep_group, root, victim=victim.key), plan.groups, "ray",
                       max_retries=0, progress=False)
    assert first[0].status == "failed" and first[0].error.startswith("ray: WorkerCrashedError")
    assert first[1].status == "ok"
    assert (root / "groups" / victim.key / "checkpoint.pt").is_file()  # epoch 1's: nothing of it is lost
    assert not (root / "runs" / victim.runs[0].id / "results.json").exists()
    done = (root / "runs" / other.runs[0].id / "results.json").stat().st_mtime_ns
    again = run_groups(functools.partial(sweep_group, root, victim=victim.key), plan.groups, "ray", progress=False)
    assert [o.status for o in again] == ["ok", "ok"]
    assert numbers(root, plan) == local_numbers
    assert resumed(root, victim.runs[0].id)
    assert (root / "runs" / other.runs[0].id / "results.json").stat().st_mtime_ns == done  # not recomputed
    assert not (root / "groups" / victim.key / "checkpoint.pt").exists()
