"""Issue 10, "Nothing lost, nothing silent": every bad input of every entry point (run, pretrain, distill,
prepare) is one line on stderr, ``rd3fast: error: ...`` naming the flag or file, exit status 2, nothing
written, and no training started. Then the writers themselves: strict JSON, the normal file mode, and a full
disk that leaves no partial file.

The fixtures are made here, small: a ConvNet teacher trained one epoch on scikit-learn's digits and a
random-real IPC 2 folder.
"""
from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import pathlib
import stat
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
import torch

from rd3fast import distill, outputs, prepare, pretrain, run
from rd3fast.config import config_from_args
from rd3fast.engine import pretraining
from rd3fast.engine import train as train_mod
from rd3fast.engine.models import build_model, save_weights
from rd3fast.errors import RD3Error
from rd3fast.results import plot_curves, write_json

ARCH = "convnet-d2-w16"
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-input")
    teacher = root / "teacher.pt"
    assert pretrain.main(["--dataset", "digits", "--arch", ARCH, "--epochs", "1", "--batch-size", "256",
                          "--out", str(teacher), "--no-progress"]) == 0
    syn = root / "syn"
    assert distill.main(["--method", "random", "--dataset", "digits", "--ipc", "2", "--out", str(syn),
                         "--no-progress"]) == 0
    return {"root": root, "teacher": teacher, "syn": syn}


# ---------------------------------------------------------------------------------------------------
# The table. Arguments may name {teacher} and {syn} (the fixtures), {tmp} (this case's folder) and {out}
# ({tmp}/out); ``setup`` makes the case's files in {tmp}; ``needs``: "non-root" (permissions do not stop
# root) or "full-disk" (the free-space probe reports 1 MB).
# ---------------------------------------------------------------------------------------------------
class Case(NamedTuple):
    entry: str
    argv: list[str]
    message: str
    setup: Callable[[Path], object] | None = None
    needs: str = ""


def evaluate(*extra: str, weights: str = "{teacher}", out: str = "{out}") -> list[str]:
    return ["--preset", "rd3-small", "--dataset", "digits", "--distilled", "{syn}", "--teacher", ARCH,
            "--teacher-weights", weights, "--student", ARCH, "--epochs", "1", "--seeds", "0", "--out", out,
            "--no-progress", *extra]


def teach(*extra: str, out: str = "{tmp}/t.pt") -> list[str]:
    return ["--dataset", "digits", "--arch", ARCH, "--epochs", "1", "--out", out, "--no-progress", *extra]


def select(*extra: str, out: str = "{out}") -> list[str]:
    return ["--method", "random", "--dataset", "digits", "--ipc", "1", "--out", out, *extra]


def text(name: str, content: str) -> Callable[[Path], object]:
    return lambda tmp: (tmp / name).write_text(content)


def folder(name: str, *, mode: int | None = None, files: tuple[str, ...] = ()) -> Callable[[Path], object]:
    def make(tmp: Path) -> None:
        (tmp / name).mkdir()
        for f in files:
            (tmp / name / f).write_text("x")
        if mode is not None:
            (tmp / name).chmod(mode)
    return make


def unreadable(name: str) -> Callable[[Path], object]:
    def make(tmp: Path) -> None:
        (tmp / name).write_text("{}")
        (tmp / name).chmod(0)
    return make


def weights(name: str, arch: str, classes: int, size: int, **extra: object) -> Callable[[Path], object]:
    return lambda tmp: save_weights(tmp / name, build_model(arch, classes, size), arch, num_classes=classes,
                                    image_size=size, **extra)


def pickled_namespace(tmp: Path) -> None:
    """A training checkpoint as many repositories save it: the state_dict beside the argparse Namespace."""
    model = build_model(ARCH, 10, 16)
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp / "ckpt.pt")


class StateDict(collections.OrderedDict):
    """An OrderedDict subclass, as some training code keeps its state_dicts: a global a safe load refuses."""


REFUSED = "it needs a global torch refuses to unpickle: "  # what every refused pickle's one line says
SET_IMAGES, SET_LABELS = torch.zeros(20, 3, 16, 16, dtype=torch.uint8), torch.arange(10).repeat(2)


def refused_pickle(name: str, what: str, protocol: int = 2) -> Callable[[Path], object]:
    """``name`` in {tmp}: a tensor set, an MTT folder's images_best.pt (+ a plain labels_best.pt) or a weights
    file, holding a global that torch's safe loader refuses (``protocol`` > 2: also warned about by torch)."""
    def make(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if what == "set":
            obj: object = {"images": SET_IMAGES, "labels": SET_LABELS, "source": pathlib.Path("/data/syn")}
        elif what == "mtt":
            obj = StateDict(images=SET_IMAGES.float() / 255)
            torch.save(SET_LABELS, path.parent / "labels_best.pt")
        else:
            obj = StateDict(build_model(ARCH, 10, 16).state_dict())
        torch.save(obj, path, pickle_protocol=protocol)
    return make




CASES: dict[str, Case] = {
    # 1. argparse: one line, no usage block, no abbreviations
    "run unknown flag": Case("run", evaluate("--epochz", "3"), "unrecognized arguments: --epochz 3; see --help"),
    "run --epoch abbreviates nothing": Case("run", evaluate("--epoch", "2"), "unrecognized arguments: --epoch 2"),
    "run --temp abbreviates nothing": Case("run", evaluate("--temp", "5"), "unrecognized arguments: --temp 5"),
    "run unknown preset": Case("run", evaluate("--preset", "nope"), "argument --preset: invalid choice: 'nope'"),
    "pretrain unknown flag": Case("pretrain", teach("--bogus"), "unrecognized arguments: --bogus; see --help"),
    "pretrain --arc abbreviates nothing": Case("pretrain", teach("--arc", ARCH), "unrecognized arguments: --arc"),
    "pretrain unknown preset": Case("pretrain", teach("--preset", "nope"), "--preset: unknown preset 'nope'"),
    "distill --see abbreviates nothing": Case("distill", select("--see", "3"), "unrecognized arguments: --see 3"),
    "distill bad --mean": Case("distill", select("--mean", "a"), "argument --mean: expected comma-separated"),
    "distill --seed -1": Case("distill", select("--seed", "-1"), "argument --seed: expected an integer in [0,"),
    "prepare unknown command": Case("prepare", ["fold"], "argument cmd: invalid choice: 'fold'"),
    "prepare --lim abbreviates nothing": Case("prepare", ["folder", "--source", "digits", "--out", "{out}",
                                                          "--lim", "1"], "unrecognized arguments: --lim 1"),
    "prepare unknown flag": Case("prepare", ["folder", "--source", "digits", "--out", "{out}", "--bogus"],
                                 "unrecognized arguments: --bogus"),
    # 2. config values
    "duplicate seeds": Case("run", evaluate("--seeds", "0,0"), "--seeds: seed 0 is given more than once"),
    "seed too large": Case("run", evaluate("--seeds", "99999999999999999999"),
                           "--seeds: expected integers in [0, 2**32)"),
    "negative seed": Case("run", evaluate("--seeds", "-1"), "--seeds: expected integers in [0, 2**32)"),
    "config seed 1e30": Case("run", evaluate("--config", "{tmp}/c.json"), "key 'seeds': expected int, got 1e+30",
                             text("c.json", '{"seeds": [1e30]}')),
    "config seed 1.5": Case("run", evaluate("--config", "{tmp}/c.json"), "key 'seeds': expected int, got 1.5",
                            text("c.json", '{"seeds": 1.5}')),
    "config bool epochs": Case("run", evaluate("--config", "{tmp}/c.json"), "key 'epochs': expected int, got True",
                               text("c.json", '{"epochs": true}')),
    "config Infinity": Case("run", evaluate("--config", "{tmp}/c.json"), "key 'lr': expected a finite number",
                            text("c.json", '{"lr": Infinity}')),
    "config is a folder": Case("run", evaluate("--config", "{tmp}/c"), "--config: {tmp}/c is a folder",
                               folder("c")),
    "config unreadable": Case("run", evaluate("--config", "{tmp}/c.json"), "--config: cannot read",
                              unreadable("c.json"), needs="non-root"),
    "lr inf": Case("run", evaluate("--lr", "inf"), "--lr: expected a finite number, got 'inf'"),
    "lr nan": Case("run", evaluate("--lr", "nan"), "--lr: expected a finite number, got 'nan'"),
    "lr 1/0": Case("run", evaluate("--lr", "1/0"), "--lr: expected float, got '1/0'"),
    "val resize ratio 2": Case("run", evaluate("--val-resize-ratio", "2"),
                               "--val-resize-ratio: expected a value in (0, 1]"),  # it named --weight-decay
    "image size -1": Case("run", evaluate("--image-size", "-1"), "--image-size: expected an integer >= 0"),
    "load size -1": Case("run", evaluate("--load-size", "-1"), "--load-size: expected an integer >= 0"),
    "epochs too large": Case("run", evaluate("--epochs", "99999999999"), "--epochs: 99999999999 is too large"),
    "momentum 1.5": Case("run", evaluate("--momentum", "1.5"), "--momentum: expected a value in [0, 1)"),
    "betas 1.5": Case("run", evaluate("--betas", "0.9,1.5"), "--betas: expected two values in [0, 1)"),
    "weight decay -1": Case("run", evaluate("--weight-decay", "-1"), "--weight-decay: expected a value >= 0"),
    "gamma 0": Case("run", evaluate("--gamma", "0"), "--gamma: expected a value > 0"),
    "milestones not increasing": Case("run", evaluate("--sched", "multistep", "--milestones", "5,3"),
                                      "--milestones: expected increasing epochs"),
    "mean of 2 values": Case("run", evaluate("--mean", "0.1,0.2"), "--mean: expected 1 or 3"),
    "teacher std -1": Case("run", evaluate("--teacher-std", "-1"), "--teacher-std: expected values > 0"),
    # 3. set names are folder names under --out
    "name escapes --out": Case("run", evaluate("--distilled", "{syn},{syn}", "--name", "a,../../x"),
                               "--name: '../../x' is not a plain folder name"),
    "name ..": Case("run", evaluate("--name", ".."), "--name: '..' is not a plain folder name"),
    "name with a slash": Case("run", evaluate("--name", "a/b"), "--name: 'a/b' is not a plain folder name"),
    "hidden name": Case("run", evaluate("--name", ".x"), "--name: '.x' is not a plain folder name"),
    # 4. outputs, checked before anything is read or trained
    "run --out is a file": Case("run", evaluate(out="{tmp}/f"), "--out {tmp}/f is a file; expected a folder",
                                text("f", "")),
    "run --out under a file": Case("run", evaluate(out="{tmp}/f/out"), "{tmp}/f is a file, not a folder",
                                   text("f", "")),
    "run --out read-only": Case("run", evaluate(out="{tmp}/ro/out"), "cannot write in {tmp}/ro",
                                folder("ro", mode=0o555), needs="non-root"),
    "run --out on a full disk": Case("run", evaluate(), "is full: 1.0 MB free", needs="full-disk"),
    "several sets, --out is a file": Case("run", evaluate("--distilled", "{syn},{syn}", out="{tmp}/f"),
                                          "is a file", text("f", "")),
    "pretrain --out is a folder": Case("pretrain", teach(out="{tmp}"), "--out {tmp} is a folder; expected a file"),
    "pretrain --out read-only": Case("pretrain", teach(out="{tmp}/ro/t.pt"), "cannot write in {tmp}/ro",
                                     folder("ro", mode=0o555), needs="non-root"),
    "pretrain --out on a full disk": Case("pretrain", teach(), "is full: 1.0 MB free", needs="full-disk"),
    "distill --out is a file": Case("distill", select(out="{tmp}/f"), "--out {tmp}/f is a file", text("f", "")),
    "distill --out not empty": Case("distill", select(out="{tmp}/d"), "--out {tmp}/d exists and is not empty",
                                    folder("d", files=("x.png",))),
    "prepare beton --out is a folder": Case("prepare", ["beton", "--source", "digits", "--out", "{tmp}"],
                                            "--out {tmp} is a folder"),
    # 6. prepare
    "prepare cache ratio 0": Case("prepare", ["cache", "--source", "{syn}", "--image-size", "16",
                                              "--val-resize-ratio", "0", "--cache-dir", "{out}"],
                                  "argument --val-resize-ratio: expected a number in (0, 1]"),
    "prepare cache image size -5": Case("prepare", ["cache", "--source", "{syn}", "--image-size", "-5",
                                                    "--cache-dir", "{out}"], "argument --image-size"),
    "prepare cache image size 0": Case("prepare", ["cache", "--source", "{syn}", "--image-size", "0",
                                                   "--cache-dir", "{out}"], "argument --image-size"),
    "prepare cache --cache-dir is a file": Case("prepare", ["cache", "--source", "{syn}", "--image-size", "16",
                                                            "--cache-dir", "{tmp}/f"],
                                                "--cache-dir {tmp}/f is a file", text("f", "")),
    "prepare folder --limit -1": Case("prepare", ["folder", "--source", "digits", "--out", "{out}", "--limit", "-1"],
                                      "argument --limit: expected an integer >= 0"),
    "prepare folder --out is a file": Case("prepare", ["folder", "--source", "digits", "--out", "{tmp}/f"],
                                           "--out {tmp}/f is a file", text("f", "")),
    # 7. weights files
    "weights are text": Case("run", evaluate(weights="{tmp}/w.pt"),
                             "weights file {tmp}/w.pt is not a torch checkpoint (it is a text file starting 'hello'",
                             text("w.pt", "hello\n")),
    "weights are a Git LFS pointer": Case("run", evaluate(weights="{tmp}/w.pt"), "Git LFS pointer",
                                          text("w.pt", "version https://git-lfs.github.com/spec/v1\n")),
    "weights hold a Namespace": Case("run", evaluate(weights="{tmp}/ckpt.pt"),
                                     "weights file {tmp}/ckpt.pt is not a weights file rd3fast can read safely: it "
                                     f"holds Python objects besides tensors ({REFUSED}argparse.Namespace)",
                                     pickled_namespace),
    # issue: one line, always: each input torch unpickles, refused in one line naming the file and the global
    "weights hold an OrderedDict subclass": Case("run", evaluate(weights="{tmp}/w.pt"),
                                                 f"weights file {{tmp}}/w.pt is not a weights file rd3fast can read "
                                                 f"safely: it holds Python objects besides tensors ({REFUSED}"
                                                 f"{__name__}.StateDict)", refused_pickle("w.pt", "weights")),
    "weights pickled with protocol 4": Case("run", evaluate(weights="{tmp}/w.pt"),
                                            "weights file {tmp}/w.pt is not a torch checkpoint (it was pickled with "
                                            "protocol 4", refused_pickle("w.pt", "weights", protocol=4)),
    "tensor set holds a pathlib.Path": Case("run", evaluate("--distilled", "{tmp}/set.pt"),
                                            f"{{tmp}}/set.pt is not a tensor file rd3fast can read safely ({REFUSED}"
                                            "pathlib.PosixPath); save plain tensors", refused_pickle("set.pt", "set")),
    "tensor set pickled with protocol 4": Case("run", evaluate("--distilled", "{tmp}/set.pt"),
                                               "cannot read tensor file {tmp}/set.pt (it was pickled with protocol 4",
                                               refused_pickle("set.pt", "set", protocol=4)),
    "MTT images_best.pt holds an OrderedDict subclass": Case(
        "run", evaluate("--distilled", "{tmp}/mtt"),
        f"{{tmp}}/mtt/images_best.pt is not a tensor file rd3fast can read safely ({REFUSED}{__name__}.StateDict)",
        refused_pickle("mtt/images_best.pt", "mtt")),
    "--zca-train holds a pathlib.Path": Case(
        "run", [*evaluate("--preset", "mtt", "--lr", "0.01"), "--zca", "--zca-train", "{tmp}/real.pt"],
        f"--zca-train: {{tmp}}/real.pt is not a tensor file rd3fast can read safely ({REFUSED}pathlib.PosixPath)",
        refused_pickle("real.pt", "set")),
    "--zca-train missing": Case("run", [*evaluate("--preset", "mtt", "--lr", "0.01"), "--zca", "--zca-train",
                                        "{tmp}/nope.pt"], "--zca-train {tmp}/nope.pt does not exist"),
    "teacher trained at another size": Case("run", evaluate("--image-size", "9"),
                                            "teacher weights {teacher} were trained at 16 px, this run uses "
                                            "--image-size 9; convnet-d2-w16's classifier depends on the image size"),
    "teacher class count": Case("run", evaluate(weights="{tmp}/t5.pt"),
                                "teacher weights {tmp}/t5.pt have 5 outputs but the data has 10 classes",
                                weights("t5.pt", ARCH, 5, 16)),
    # issue 12: coupled-method sets, DSA, ZCA, recover
    "--lr from-set on a folder": Case("run", evaluate("--lr", "from-set"),
                                      "--lr from-set: {syn} ships no learned learning rate"),
    "--label-source set with kl on hard labels": Case("run", evaluate("--label-source", "set"),
                                                      "--label-source set with --loss kl: {syn} has hard labels"),
    "--aug dsa with a crop": Case("run", evaluate("--aug", "dsa"), "--aug dsa replaces the crop/flip/PatchShuffle"),
    "--zca without dsa": Case("run", evaluate("--zca"), "--zca: whitening is applied before augmentation"),
    "unknown DSA family": Case("run", evaluate("--dsa-strategy", "color_warp"),
                               "--dsa-strategy: unknown family 'warp'"),
    "mtt on images of another size": Case("run", [*evaluate("--preset", "mtt", "--lr", "0.01"), "--image-size", "20"],
                                          "--aug dsa trains on {syn} at its own size (16 px"),
    "sre2l teacher without BatchNorm": Case("distill", ["--method", "sre2l", "--dataset", "digits", "--ipc", "1",
                                                        "--teacher", ARCH, "--teacher-weights", "{teacher}",
                                                        "--out", "{out}"],
                                            f"teacher {ARCH} has no BatchNorm layer"),
}

MAINS = {"run": run.main, "pretrain": pretrain.main, "distill": distill.main, "prepare": prepare.main}


def call(entry: str, argv: list[str]) -> int:
    """An entry point's exit status, whether it returned it or argparse raised SystemExit."""
    try:
        return MAINS[entry](argv)
    except SystemExit as e:
        return int(e.code or 0)


def tree(*roots: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for r in roots for p in r.rglob("*")}


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case must fail before a training step: training now is a test failure, not an exit 2."""
    def trained(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started before the bad input was reported")

    monkeypatch.setattr(train_mod, "train_seeds", trained)
    monkeypatch.setattr(pretraining, "train", trained)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_nothing_written(case: str, work: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, no_training: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    c = CASES[case]
    if c.needs == "non-root" and ROOT:
        pytest.skip("root writes whatever the permissions say")
    if c.setup:
        c.setup(tmp_path)
    if c.needs == "full-disk":
        monkeypatch.setattr(outputs, "free_bytes", lambda path: 2**20)
    names = {"teacher": work["teacher"], "syn": work["syn"], "tmp": tmp_path, "out": tmp_path / "out"}
    argv = [a.format(**names) for a in c.argv]
    before = tree(tmp_path, work["root"])
    try:
        with warnings.catch_warnings(record=True) as warned:  # a warning would be more lines on stderr
            warnings.simplefilter("always")
            rc = call(c.entry, argv)
    finally:
        for p in tmp_path.iterdir():  # let pytest clean up what was made read-only
            p.chmod(stat.S_IRWXU | p.stat().st_mode)
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert err.startswith("rd3fast: error: ") and err.count("\n") == 1, err
    assert c.message.format(**names) in err, err
    assert out == "", "nothing is printed before the error"
    assert tree(tmp_path, work["root"]) == before, "a failed command wrote something"
    assert not [w for w in warned if "torch" in w.filename], [str(w.message) for w in warned]


# A refused run in an --out that exists leaves no file there (the lock file included). Not a CASES entry:
# checking that --out is writable creates and removes a probe file in it, which changes the folder's mtime.
EXISTING_OUT = {
    "--out holds a results.json rd3fast did not write": (evaluate(), "{out}/results.json is not an rd3fast results",
                                                         lambda tmp: (tmp / "out" / "results.json").write_text("{}")),
    "bad weights found after --out is locked": (evaluate(weights="{tmp}/w.pt"),
                                                "weights file {tmp}/w.pt is not a torch checkpoint",
                                                lambda tmp: (tmp / "w.pt").write_text("x")),
}


@pytest.mark.parametrize("case", list(EXISTING_OUT))
def test_refused_run_leaves_no_lock_file_in_an_existing_out(case: str, work: dict[str, Path], tmp_path: Path,
                                                            no_training: None,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv, message, setup = EXISTING_OUT[case]
    (tmp_path / "out").mkdir()
    setup(tmp_path)
    names = {"teacher": work["teacher"], "syn": work["syn"], "tmp": tmp_path, "out": tmp_path / "out"}
    files = {p: p.stat().st_mtime for p in tmp_path.rglob("*") if p.is_file()}
    assert call("run", [a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(**names) in err, err
    assert {p: p.stat().st_mtime for p in tmp_path.rglob("*") if p.is_file()} == files, "a lock file was left"


# ---------------------------------------------------------------------------------------------------
# 5. The writers: strict JSON, the normal file mode, a full disk
# ---------------------------------------------------------------------------------------------------
RECORD = {"name": "s", "config": {"preset": "rd3"},
          "runs": [{"evals": [{"epoch": 1, "top1": 10.0}], "epochs": [{"epoch": 1, "loss": 2.3}]}]}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_results_are_strict_json(tmp_path: Path, value: float) -> None:
    bad = json.loads(json.dumps(RECORD))
    bad["runs"][0]["epochs"][0]["loss"] = value
    with pytest.raises(ValueError, match=r"runs\[0\]\.epochs\[0\]\.loss = .*not a finite number"):
        write_json(tmp_path / "results.json", bad)
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "results.json", RECORD)
    assert json.loads((tmp_path / "results.json").read_text()) == RECORD


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_get_the_normal_mode(tmp_path: Path, umask: int) -> None:
    """0o666 & ~umask like any new file (the atomic writer's temporary files were 0600)."""
    old = os.umask(umask)
    try:
        write_json(tmp_path / "results.json", RECORD)
        plot_curves([RECORD], tmp_path / "curves.png")
        save_weights(tmp_path / "w.pt", build_model("convnet-d1-w4", 3, 8), "convnet-d1-w4")
        folder = prepare.export_folder("digits", tmp_path / "val", limit=1)
    finally:
        os.umask(old)
    for name in ("results.json", "curves.png", "w.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def fill_then_fail(code: int, dest: int) -> Callable[..., None]:
    """A stand-in for a writer whose positional argument ``dest`` is the file (a path or a file object): it
    puts some bytes down, then meets a full disk (or quota)."""
    def write(*args: object, **kwargs: object) -> None:
        target = args[dest]
        if hasattr(target, "write"):
            target.write(b"partial")
        else:
            with open(target, "ab") as f:
                f.write(b"partial")
        raise OSError(code, os.strerror(code))
    return write


# name -> (the writer's lowest call that touches the disk, its destination argument, the writer)
WRITERS = {
    "results.json": ("pathlib.Path.write_text", 0, lambda d: write_json(d / "results.json", RECORD)),
    "curves.png": ("matplotlib.figure.Figure.savefig", 1, lambda d: plot_curves([RECORD], d / "curves.png")),
    "w.pt": ("torch.save", 1, lambda d: save_weights(d / "w.pt", build_model("convnet-d1-w4", 3, 8),
                                                     "convnet-d1-w4")),
    "val": ("PIL.Image.Image.save", 1, lambda d: prepare.export_folder("digits", d / "val", limit=1)),
}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("name", list(WRITERS))
def test_full_disk_is_one_error_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                   code: int) -> None:
    target, dest, write = WRITERS[name]
    monkeypatch.setattr(target, fill_then_fail(code, dest))
    with pytest.raises(RD3Error, match=f"^no space left on device writing {tmp_path / name}$"):
        write(tmp_path)
    assert list(tmp_path.iterdir()) == [], "a partial or temporary file was left"


def test_teacher_normalization_fields_exist() -> None:
    """Config fields for per-teacher normalization (their use comes later): flags parse, () by default."""
    args = run.build_parser().parse_args(["--teacher-mean", "0.5", "--teacher-std", "0.25,0.25,0.25"])
    cfg = config_from_args(args)
    assert cfg.teacher_mean == (0.5,) and cfg.teacher_std == (0.25, 0.25, 0.25)
    assert config_from_args(run.build_parser().parse_args([])).teacher_mean == ()
