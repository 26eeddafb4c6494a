"""Checkpoint and resume: an interrupted run continues where it stopped and ends with the numbers of an
uninterrupted one (exactly, on the CPU); signals checkpoint and exit 128 + signal; one writer per --out."""
from __future__ import annotations

import signal

import pytest
import torch

from rd3fast.engine.checkpoint import Checkpointing, Interrupted, StopRequest
from rd3fast.engine.train import train_seeds
from rd3fast.errors import RD3Error
from rd3fast.lock import OutputLock
from tests.test_engine import params_of, toy_experiment


class StopAfter(StopRequest):
    """A stop request that arrives after ``checks`` looks at it (the loop looks once per step)."""

    def __init__(self, checks: int, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.left, self.pending = checks, signum

    def __bool__(self) -> bool:
        self.left -= 1
        if self.left < 0:
            self.signum = self.pending
        return self.signum is not None


def strip(result):
    """The numbers of a run (what must not change), without timings and notes."""
    return ([(e["epoch"], e["loss"], e["lr"]) for e in result.epochs], result.evals, result.failure)


@pytest.mark.parametrize("stop_at,seeds,overrides", [
    (3, [0], {}),  # mid-epoch (4 steps per epoch)
    (4, [0], {"ema_decay": 0.9}),  # at an epoch boundary, EMA state included
    (6, [0, 1], {"rded_extra_forward": True}),  # K runs at once, mid-epoch
])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, stop_at, seeds, overrides):
    settings = dict(epochs=3, batch_size=10, **overrides)
    straight = train_seeds(toy_experiment(**settings), seeds, progress=False)

    ckpt = Checkpointing(tmp_path / "group.pt", every=0, stop=StopAfter(stop_at), identity={"k": 1})
    with pytest.raises(Interrupted) as stopped:
        train_seeds(toy_experiment(**settings), seeds, progress=False, checkpoint=ckpt)
    assert stopped.value.exit_code == 143 and "run the same command to resume" in stopped.value.message()
    assert ckpt.path.is_file()

    resumed = train_seeds(toy_experiment(**settings), seeds, progress=False,
                          checkpoint=Checkpointing(tmp_path / "group.pt", identity={"k": 1}))
    for (a, ma), (b, mb) in zip(straight, resumed):
        assert strip(a) == strip(b)
        assert torch.equal(params_of(ma), params_of(mb))
        assert any("resumed from a checkpoint" in n for n in b.notes)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ckpt = Checkpointing(tmp_path / "g.pt", stop=StopAfter(1), identity={"config": {"lr": 1}})
    with pytest.raises(Interrupted):
        train_seeds(toy_experiment(), [0], progress=False, checkpoint=ckpt)
    other = Checkpointing(tmp_path / "g.pt", identity={"config": {"lr": 2}})
    with pytest.raises(RD3Error, match="different run.*config.*--restart"):
        other.load()
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(RD3Error, match="unreadable"):
        Checkpointing(tmp_path / "bad.pt").load()


def test_automatic_interval_keeps_checkpointing_under_one_percent(tmp_path):
    ckpt = Checkpointing(tmp_path / "g.pt", every=0, identity={})
    [(r, _)] = train_seeds(toy_experiment(epochs=6), [0], progress=False, checkpoint=ckpt)
    assert ckpt.writes >= 1  # the first one measures the write
    assert any(n.startswith("checkpoints: ") for n in r.notes)
    every2 = Checkpointing(tmp_path / "h.pt", every=2, identity={})
    train_seeds(toy_experiment(epochs=6), [0], progress=False, checkpoint=every2)
    assert every2.writes == 2  # after epochs 2 and 4 (never after the last: the results are written then)


def test_non_finite_loss_marks_the_run_failed(tmp_path):
    [(r, _)] = train_seeds(toy_experiment(lr=1e30, epochs=3), [0], progress=False)
    s = r.summary()
    assert s["status"] == "failed" and s["last_top1"] is None
    assert s["failure"]["epoch"] >= 1 and "non-finite" in s["failure"]["reason"]
    assert all(e["loss"] is None or e["loss"] == e["loss"] for e in s["epochs"])  # no NaN in the record


def test_a_second_writer_is_stopped_with_the_holders_pid(tmp_path):
    import os

    with OutputLock.folder(tmp_path / "out"):
        with pytest.raises(RD3Error, match=f"in use by another rd3fast run \\(pid {os.getpid()}"):
            OutputLock.folder(tmp_path / "out").acquire()
    with OutputLock.folder(tmp_path / "out"):  # released: free again
        pass
    assert not (tmp_path / "out").exists()  # it wrote nothing, so it left nothing


# --- through the CLI -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_work(tmp_path_factory):
    from rd3fast import distill, pretrain

    root = tmp_path_factory.mktemp("resume")
    teacher = root / "teacher.pt"
    assert pretrain.main(["--dataset", "digits", "--arch", "convnet-d2-w16", "--epochs", "2", "--batch-size", "64",
                          "--out", str(teacher), "--no-progress"]) == 0
    syn = root / "syn"
    assert distill.main(["--method", "random", "--dataset", "digits", "--ipc", "3", "--out", str(syn)]) == 0
    return teacher, syn


def run_args(work, out, *extra):
    teacher, syn = work
    return ["--preset", "rd3-small", "--dataset", "digits", "--distilled", str(syn), "--teacher", "convnet-d2-w16",
            "--teacher-weights", str(teacher), "--student", "convnet-d2-w16", "--epochs", "3", "--out", str(out),
            "--no-progress", *extra]


def test_rerun_keeps_finished_seeds_and_refuses_another_config(digits_work, tmp_path, capsys, monkeypatch):
    import json

    from rd3fast import run
    from rd3fast.engine import train

    out = tmp_path / "out"
    assert run.main(run_args(digits_work, out, "--seeds", "0")) == 0
    first = json.loads((out / "results.json").read_text())["runs"]
    trained = []
    real = train.train_seeds
    monkeypatch.setattr(train, "train_seeds", lambda exp, seeds, **kw: trained.append(list(seeds)) or real(exp, seeds, **kw))
    assert run.main(run_args(digits_work, out, "--seeds", "0,1")) == 0  # more seeds: only seed 1 trains
    assert trained == [[1]]
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1] and runs[0] == first[0]
    capsys.readouterr()
    assert run.main(run_args(digits_work, out, "--seeds", "0,1", "--lr", "0.002")) == 2
    err = capsys.readouterr().err
    assert "holds results of a different config (lr: 0.001 there, 0.002 now)" in err and "--restart" in err
    assert run.main(run_args(digits_work, out, "--seeds", "0,1", "--lr", "0.002", "--restart")) == 0
    assert trained[1:] == [[0], [1]]  # everything again, from scratch
    assert json.loads((out / "results.json").read_text())["config"]["lr"] == 0.002


def test_pretrain_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from rd3fast import pretrain
    from rd3fast.engine import train

    args = ["--dataset", "digits", "--arch", "convnet-d2-w8", "--epochs", "3", "--batch-size", "256", "--out",
            str(tmp_path / "t.pt"), "--no-progress", "--checkpoint-every", "1"]
    assert pretrain.main(args) == 0
    straight = torch.load(tmp_path / "t.pt", weights_only=True)
    (tmp_path / "t.pt").unlink()
    real = train.train_seeds

    def stopped_once(exp, seeds, **kw):
        kw["checkpoint"].stop = StopAfter(5, signal.SIGUSR1)
        return real(exp, seeds, **kw)

    monkeypatch.setattr(train, "train_seeds", stopped_once)
    assert pretrain.main(args) == 128 + signal.SIGUSR1
    assert (tmp_path / "t.pt.ckpt").is_file() and not (tmp_path / "t.pt").exists()
    monkeypatch.setattr(train, "train_seeds", real)
    assert pretrain.main(args) == 0
    resumed = torch.load(tmp_path / "t.pt", weights_only=True)
    assert not (tmp_path / "t.pt.ckpt").exists() and not (tmp_path / "t.pt.lock").exists()
    assert resumed["val_top1"] == straight["val_top1"]
    assert all(torch.equal(resumed["state_dict"][k], v) for k, v in straight["state_dict"].items())


def test_recording_a_cache_resumes_at_an_epoch_boundary(tmp_path):
    import numpy as np

    settings = dict(epochs=3, cache_mode="record", cache_topk=2)
    straight = train_seeds(toy_experiment(cache=str(tmp_path / "a"), **settings), [0], progress=False)
    ckpt = Checkpointing(tmp_path / "g.pt", stop=StopAfter(2), identity={})  # mid-epoch 1: stops at its end
    with pytest.raises(Interrupted):
        train_seeds(toy_experiment(cache=str(tmp_path / "b"), **settings), [0], progress=False, checkpoint=ckpt)
    resumed = train_seeds(toy_experiment(cache=str(tmp_path / "b"), **settings), [0], progress=False,
                          checkpoint=Checkpointing(tmp_path / "g.pt", identity={}))
    assert strip(straight[0][0]) == strip(resumed[0][0])
    for epoch in range(3):
        a, b = (np.load(tmp_path / d / f"epoch_{epoch:05d}.npz") for d in ("a", "b"))
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_heldout_split_is_evaluated_beside_the_test_set():
    import dataclasses

    from rd3fast.data.sets import heldout_split

    held = heldout_split("digits", 50, seed=3)
    assert len(held.labels) == 50 and torch.bincount(held.labels).tolist() == [5] * 10
    assert torch.equal(held.images, heldout_split("digits", 50, seed=3).images)
    assert not torch.equal(held.images, heldout_split("digits", 50, seed=4).images)
    exp = toy_experiment(epochs=2)
    exp = dataclasses.replace(exp, heldout=exp.val)  # the toy set as its own held-out split
    [(r, _)] = train_seeds(exp, [0], progress=False)
    assert all(e["heldout_top1"] == e["top1"] for e in r.evals)
    assert r.summary()["last_heldout_top1"] == r.evals[-1]["top1"]
    with pytest.raises(RD3Error, match="multiple of its 10 classes"):
        heldout_split("digits", 55)


def test_a_cache_entry_being_built_makes_the_next_builder_wait(tmp_path):
    import threading

    entry = tmp_path / "entry.npy"
    first = OutputLock.file(entry, "--val-cache").acquire()
    order = []

    def second():
        with OutputLock.file(entry, "--val-cache").acquire(wait=True):
            order.append("second")

    t = threading.Thread(target=second)
    t.start()
    t.join(0.3)
    assert t.is_alive() and order == []  # waiting, not failing
    order.append("first done")
    first.release()
    t.join(10)
    assert order == ["first done", "second"]
    with pytest.raises(RD3Error, match="in use"):  # without wait: stops at once
        with OutputLock.file(entry).acquire():
            OutputLock.file(entry).acquire()
