"""Every fault has a command that recovers from it, and every refusal is one line.

- An unreadable checkpoint (a sweep group's, a ``run``'s) is set aside as ``<name>.unreadable-<time>`` with one
  line on stderr and its runs start over, so rerunning the same command recovers; ``bench --restart`` discards
  the checkpoints of the groups it trains on purpose (finished runs are still never retrained).
- A soft-label cache with a damaged member is refused when it is opened, naming the member, not epochs in.
- A teacher a sweep cannot load is refused when the plan is made, not when its group trains.
- A refused validation cache leaves no empty folder; torch's warnings never reach stderr.

The fixtures are small: a random-init ConvNet teacher (only its shape matters) and random-real IPC 2 subsets
of scikit-learn's digits.
"""
from __future__ import annotations

import collections
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from rd3fast import evaluate, pretrain, run
from rd3fast.bench import __main__ as bench
from rd3fast.bench.group import run_group
from rd3fast.bench.plan import build_plan
from rd3fast.bench.sweepfile import load_sweep
from rd3fast.bench.teachers import check_teachers
from rd3fast.data import valcache
from rd3fast.data.sets import load_real, write_image_folder
from rd3fast.engine import train as training
from rd3fast.engine.checkpoint import Checkpointing, Interrupted
from rd3fast.engine.models import build_model, save_weights
from rd3fast.engine.soft_labels import SoftLabelCache
from rd3fast.errors import RD3Error
from rd3fast.lock import LOCK_NAME, OutputLock
from rd3fast.methods.coreset import random_real
from tests.test_bad_data import image_folder, recorded_cache
from tests.test_resume import StopAfter

ARCH = "convnet-d2-w8"
REPO = Path(__file__).resolve().parents[1]


class StateDict(collections.OrderedDict):
    """A global torch's safe loader refuses (as an OrderedDict subclass some training code keeps)."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("recovery-inputs")
    torch.manual_seed(0)
    save_weights(base / "teacher.pt", build_model(ARCH, 10, 16), ARCH, num_classes=10, image_size=16)
    write_image_folder(random_real(load_real("digits", "train"), 2, seed=0), base / "syn")
    return base


def sweep_file(folder: Path, inputs: Path, arch: str = ARCH, weights: Path | None = None) -> Path:
    """A one-group sweep: the set under rd3-small, seeds 0 and 1 at once, one epoch."""
    path, weights = folder / "s.toml", weights or inputs / "teacher.pt"
    path.write_text(f'root = "out"\ndataset = "digits"\nseeds = [0, 1]\nstudents = ["{ARCH}"]\nepochs = 1\n'
                    f'parallel_seeds = 2\n[[teachers]]\narch = "{arch}"\nweights = "{weights}"\n'
                    f'[[sets]]\nname = "random"\npath = "{inputs / "syn"}"\nmethod = "random-real"\nipc = 2\n'
                    '[protocols.rd3-small]\n')
    return path


def results(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (root / "runs").glob("*/results.json")}


def lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip()]


# ---------------------------------------------------------------------------------------------------
# Unreadable checkpoints: set aside, the runs start over
# ---------------------------------------------------------------------------------------------------
def refused_pickle(path: Path) -> str:
    torch.save({"schema": 1, "identity": StateDict(runs=[])}, path)
    return f"{__name__}.StateDict"


def garbage(path: Path) -> str:
    path.write_bytes(b"\x80\x02not a checkpoint at all")
    return "UnpicklingError"


def half_a_checkpoint(path: Path) -> str:
    Checkpointing(path, identity={"runs": ["x"]}).save({"epoch": 1, "weights": torch.zeros(1000)})
    path.write_bytes(path.read_bytes()[:300])
    return "failed finding central directory"


def not_a_checkpoint(path: Path) -> str:
    torch.save([1, 2, 3], path)
    return "not an rd3fast checkpoint of this version"


DAMAGE: dict[str, Callable[[Path], str]] = {"refused global": refused_pickle, "garbage": garbage,
                                            "truncated": half_a_checkpoint, "a list": not_a_checkpoint}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_unreadable_group_checkpoint_is_set_aside_and_the_group_starts_over(damage: str, inputs: Path,
                                                                           tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    toml = sweep_file(tmp_path, inputs)
    [group] = build_plan(load_sweep(toml)).groups
    ckpt = tmp_path / "out" / "groups" / group.key / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    reason = DAMAGE[damage](ckpt)
    blob = ckpt.read_bytes()
    assert bench.main([str(toml), "--no-progress"]) == 0  # was: both runs failed, and so on every rerun
    [line] = lines(capsys.readouterr().err)
    [aside] = ckpt.parent.parent.glob(f"{group.key}/checkpoint.pt.unreadable-*")
    assert line.startswith(f"rd3fast: checkpoint {ckpt} is unreadable (") and reason in line, line
    assert line.endswith(f"set it aside as {aside} and started its runs over"), line
    assert aside.read_bytes() == blob and not ckpt.exists()
    recs = results(tmp_path / "out")
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs.values())


def test_run_sets_an_unreadable_checkpoint_aside(inputs: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``run`` too: the same command recovers (``--restart`` would also discard the finished seeds)."""
    out = tmp_path / "out"
    ckpt = evaluate._checkpoint_path(out, [("syn", 0)])
    ckpt.parent.mkdir(parents=True)
    refused_pickle(ckpt)
    assert run.main(["--preset", "rd3-small", "--dataset", "digits", "--distilled", str(inputs / "syn"), "--teacher",
                     ARCH, "--teacher-weights", str(inputs / "teacher.pt"), "--student", ARCH, "--epochs", "1",
                     "--seeds", "0", "--out", str(out), "--no-progress"]) == 0
    [line] = lines(capsys.readouterr().err)
    assert f"checkpoint {ckpt} is unreadable (it needs a global torch refuses to unpickle: {__name__}.StateDict)" \
        in line and "set it aside as" in line, line
    assert len(list(ckpt.parent.glob("*.unreadable-*"))) == 1
    assert json.loads((out / "results.json").read_text())["runs"][0]["status"] == "ok"


def test_pretrain_sets_an_unreadable_checkpoint_aside_and_starts_over(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """As `run` and the sweeps: one line naming the file, the refused global and where it went; then the
    pre-training runs from the start and writes its weights."""
    out = tmp_path / "t.pt"
    ckpt = Path(f"{out}.ckpt")
    refused_pickle(ckpt)
    assert pretrain.main(["--dataset", "digits", "--arch", ARCH, "--epochs", "1", "--out", str(out),
                          "--no-progress"]) == 0
    [line] = lines(capsys.readouterr().err)
    assert f"checkpoint {ckpt} is unreadable (it needs a global torch refuses to unpickle: {__name__}.StateDict)" \
        in line and "set it aside as" in line, line
    assert len(list(tmp_path.glob("t.pt.ckpt.unreadable-*"))) == 1 and out.is_file() and not ckpt.exists()


def test_bench_restart_discards_the_checkpoints_of_the_groups_it_trains(inputs: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    toml = sweep_file(tmp_path, inputs)
    root, [group] = tmp_path / "out", build_plan(load_sweep(toml)).groups
    with pytest.raises(Interrupted):
        run_group(root, group, progress=False, stop=StopAfter(1))
    assert (root / "groups" / group.key / "checkpoint.pt").is_file()
    assert bench.main([str(toml), "--restart", "--no-progress"]) == 0
    assert "--restart: discarded 1 group checkpoint(s); their runs start over" in capsys.readouterr().out
    recs = results(root)
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs.values())
    assert not any("resumed" in n for r in recs.values() for n in r["run"]["notes"])
    trained = []
    monkeypatch.setattr(training, "train_seeds", lambda *a, **kw: trained.append(a) or [])
    assert bench.main([str(toml), "--restart", "--no-progress"]) == 0  # finished runs are never retrained
    assert trained == [] and results(root) == recs


# ---------------------------------------------------------------------------------------------------
# Soft-label cache: a damaged member is found when the cache opens
# ---------------------------------------------------------------------------------------------------
def member_data(file: Path, name: str) -> tuple[int, int]:
    """(offset, size) of a stored zip member's bytes in ``file``."""
    import zipfile

    with zipfile.ZipFile(file) as z:
        info = z.getinfo(name)
    with open(file, "rb") as f:
        f.seek(info.header_offset + 26)
        n, m = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + n + m, info.compress_size


def flip_member_byte(name: str) -> Callable[[Path], None]:
    def damage(file: Path) -> None:
        at, size = member_data(file, name)
        blob = bytearray(file.read_bytes())
        blob[at + size - 1] ^= 0xFF  # the member's last data byte: past its .npy header, within its array
        file.write_bytes(bytes(blob))
    return damage


def zero_member_tail(file: Path) -> None:
    at, size = member_data(file, "idx.npy")
    blob = bytearray(file.read_bytes())
    blob[at + size // 2:at + size] = bytes(size - size // 2)
    file.write_bytes(bytes(blob))


@pytest.mark.parametrize("damage,member", [(flip_member_byte("values.npy"), "values.npy"),
                                           (flip_member_byte("lam.npy"), "lam.npy"),
                                           (zero_member_tail, "idx.npy")],
                         ids=["values byte flipped", "lam byte flipped", "idx overwritten"])
def test_damaged_cache_member_is_found_when_the_cache_opens(damage: Callable[[Path], None], member: str,
                                                            tmp_path: Path) -> None:
    folder = recorded_cache(tmp_path / "soft", epochs=3)
    damage(folder / "epoch_00002.npz")
    with pytest.raises(RD3Error) as caught:
        SoftLabelCache(folder, "replay")  # was: opened fine, failed when epoch 2 was replayed
    message = str(caught.value)
    assert "\n" not in message and f"epoch_00002.npz is unreadable or truncated (its member {member} is corrupt" \
        in message and message.endswith(f"delete the folder {folder} and record it again (--cache-mode record)")


def test_replaying_a_damaged_cache_stops_before_training(inputs: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--preset", "rd3-small", "--dataset", "digits", "--distilled", str(inputs / "syn"), "--teacher", ARCH,
            "--teacher-weights", str(inputs / "teacher.pt"), "--student", ARCH, "--epochs", "2", "--seeds", "0",
            "--cache", str(tmp_path / "soft"), "--no-progress"]
    assert run.main([*args, "--cache-mode", "record", "--out", str(tmp_path / "a")]) == 0
    flip_member_byte("values.npy")(tmp_path / "soft" / "epoch_00001.npz")
    replayed = []
    real = SoftLabelCache.epoch
    monkeypatch.setattr(SoftLabelCache, "epoch", lambda self, e, d: replayed.append(e) or real(self, e, d))
    capsys.readouterr()
    assert run.main([*args, "--cache-mode", "replay", "--out", str(tmp_path / "b")]) == 2
    [line] = lines(capsys.readouterr().err)
    assert "epoch_00001.npz is unreadable or truncated (its member values.npy is corrupt" in line, line
    assert replayed == [] and not (tmp_path / "b" / "results.json").exists()


# ---------------------------------------------------------------------------------------------------
# Teachers a sweep cannot load: refused when the plan is made
# ---------------------------------------------------------------------------------------------------
BAD_TEACHERS = {  # name -> (setup(tmp, inputs) -> (arch, weights), message)
    "another architecture": (lambda tmp, inp: ("convnet-d3-w16", inp / "teacher.pt"),
                             "does not fit architecture 'convnet-d3-w16'"),
    "5 classes": (lambda tmp, inp: (ARCH, five_classes(tmp)), "have 5 outputs but the data has 10 classes"),
    "not a checkpoint": (lambda tmp, inp: (ARCH, text_file(tmp)), "is not a torch checkpoint"),
    "a refused global": (lambda tmp, inp: (ARCH, state_dict_subclass(tmp)),
                         f"it needs a global torch refuses to unpickle: {__name__}.StateDict"),
}


def five_classes(tmp: Path) -> Path:
    save_weights(tmp / "t5.pt", build_model(ARCH, 5, 16), ARCH, num_classes=5, image_size=16)
    return tmp / "t5.pt"


def text_file(tmp: Path) -> Path:
    (tmp / "t.pt").write_text("hello\n")
    return tmp / "t.pt"


def state_dict_subclass(tmp: Path) -> Path:
    torch.save(StateDict(build_model(ARCH, 10, 16).state_dict()), tmp / "t.pt")
    return tmp / "t.pt"


@pytest.mark.parametrize("case", list(BAD_TEACHERS))
def test_check_teachers_refuses_a_teacher_that_does_not_load(case: str, inputs: Path, tmp_path: Path) -> None:
    setup, message = BAD_TEACHERS[case]
    arch, weights = setup(tmp_path, inputs)
    good = load_sweep(sweep_file(tmp_path, inputs))
    facts = collections.namedtuple("Facts", "classes image_size")(10, 16)
    runs = [(r.config, facts) for r in build_plan(good).runs]  # the runs' configs: the set's, the protocol's
    check_teachers(good, runs)  # the good teacher loads
    toml = sweep_file(tmp_path, inputs, arch, weights)
    with pytest.raises(RD3Error) as caught:
        check_teachers(load_sweep(toml), runs)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{toml}: [[teachers]] #1 ({arch}, {Path(weights).name}): ") \
        and message in text, text


def test_sweep_with_a_teacher_that_does_not_load_is_refused_at_plan_time(inputs: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Needs ``check_teachers`` called in ``plan.build_plan``: without it the groups train, and fail."""
    monkeypatch.setattr(training, "train_seeds", lambda *a, **kw: pytest.fail("a group trained"))
    toml = sweep_file(tmp_path, inputs, "convnet-d3-w16")
    assert bench.main([str(toml), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    [line] = lines(err)
    assert line.startswith(f"rd3fast: error: {toml}: [[teachers]] #1 (convnet-d3-w16, teacher.pt): ") and \
        "does not fit architecture 'convnet-d3-w16'" in line, line
    assert out == "" and not (tmp_path / "out").exists(), "nothing printed or written (no lock file either)"


# ---------------------------------------------------------------------------------------------------
# The validation cache: a refused one leaves no empty folder
# ---------------------------------------------------------------------------------------------------
def corrupt_val(root: Path) -> Path:
    """A 2-class validation folder with one file that is no image."""
    image_folder(root)
    (root / "c1" / "bad.png").write_bytes(b"not a png")
    return root


def test_failed_validation_cache_fill_leaves_no_empty_folder(tmp_path: Path) -> None:
    val = corrupt_val(tmp_path / "val")
    with pytest.raises(RD3Error, match=r"bad\.png"):
        valcache.build(val, image_size=8, resize_ratio=1.0, workers=1, progress=False,
                       cache_dir=tmp_path / "new" / "vc")
    assert not (tmp_path / "new").exists()  # was: new/vc/val left behind, empty


def test_unwritable_validation_cache_leaves_no_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.access says the created folder is not writable (what a umask of 0o222 or an ACL would make)."""
    val = image_folder(tmp_path / "val")
    denied = tmp_path / "new" / "vc" / "val"
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **kw: False if Path(p) == denied else real(p, m, **kw))
    with pytest.raises(RD3Error, match=r"--val-cache .*vc: .*val is not writable"):
        valcache.build(val, image_size=8, resize_ratio=1.0, workers=1, progress=False,
                       cache_dir=tmp_path / "new" / "vc")
    assert not (tmp_path / "new").exists()


def test_val_cache_under_a_file_creates_nothing(tmp_path: Path) -> None:
    val = image_folder(tmp_path / "val")
    (tmp_path / "f").write_text("a file")
    with pytest.raises(RD3Error, match=r"--val-cache .*: .*f is a file, not a folder"):
        valcache.build(val, image_size=8, resize_ratio=1.0, workers=1, progress=False, cache_dir=tmp_path / "f" / "vc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "val"]


def test_run_with_a_corrupt_val_image_leaves_no_cache_folder(inputs: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    val = tmp_path / "val"
    for c in range(10):
        (val / str(c)).mkdir(parents=True)
        Image.fromarray(np.full((16, 16, 3), 20 * c, np.uint8)).save(val / str(c) / "a.png")
    (val / "3" / "bad.png").write_bytes(b"not a png")
    assert run.main(["--preset", "rd3-small", "--val", str(val), "--distilled", str(inputs / "syn"), "--teacher", ARCH,
                     "--teacher-weights", str(inputs / "teacher.pt"), "--student", ARCH, "--epochs", "1",
                     "--seeds", "0", "--image-size", "16", "--val-cache", str(tmp_path / "vc"),
                     "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    [line] = lines(capsys.readouterr().err)
    assert "bad.png" in line, line
    assert not (tmp_path / "vc").exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------
# The output lock: released, it leaves no file; one waiting for it survives the file's removal
# ---------------------------------------------------------------------------------------------------
def test_a_waiting_lock_takes_over_when_the_holder_removes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    holder = OutputLock.folder(out).acquire()
    waiter = OutputLock.folder(out)
    took = threading.Event()
    thread = threading.Thread(target=lambda: (waiter.acquire(wait=True), took.set()))
    thread.start()
    time.sleep(0.3)
    assert not took.is_set()
    holder.release()  # unlinks the file the waiter is blocked on, and removes the folders it made
    thread.join(10)
    assert took.is_set() and (out / LOCK_NAME).is_file()
    with pytest.raises(RD3Error, match="is in use by another rd3fast run"):
        OutputLock.folder(out).acquire()  # the waiter holds the file at the path, not an unlinked one
    waiter.release()
    assert not (tmp_path / "new").exists()  # nothing of either lock is left


# ---------------------------------------------------------------------------------------------------
# Torch's warnings never reach the terminal
# ---------------------------------------------------------------------------------------------------
def test_refused_pickle_is_one_line_on_a_real_stderr(inputs: Path, tmp_path: Path) -> None:
    """A real process (pytest captures warnings, a terminal does not): a tensor set pickled with protocol 4
    makes torch warn before it refuses; the user sees one line."""
    torch.save({"images": torch.zeros(20, 3, 16, 16, dtype=torch.uint8), "labels": torch.arange(10).repeat(2)},
               tmp_path / "set.pt", pickle_protocol=4)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "rd3fast.run", "--preset", "rd3-small", "--dataset", "digits",
                           "--distilled", str(tmp_path / "set.pt"), "--teacher", ARCH, "--teacher-weights",
                           str(inputs / "teacher.pt"), "--student", ARCH, "--epochs", "1", "--seeds", "0",
                           "--out", str(tmp_path / "out"), "--no-progress"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"rd3fast: error: cannot read tensor file {tmp_path / 'set.pt'} (it was pickled with "
                           "protocol 4, which torch's safe loader does not read; save it with torch.save)\n")
