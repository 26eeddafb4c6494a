"""End to end on scikit-learn's digits: pre-train, distill, evaluate from the CLIs; every bad input."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from rd3fast import distill, pretrain, run
from rd3fast.config import resolve
from rd3fast.engine.experiment import prepare
from rd3fast.engine.models import build_model, save_weights
from rd3fast.engine.train import train

ARCH = "convnet-d2-w16"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A teacher trained on digits and a random-real IPC 5 folder, made through the CLIs."""
    root = tmp_path_factory.mktemp("digits")
    teacher = root / "teacher.pt"
    rc = pretrain.main(["--dataset", "digits", "--arch", ARCH, "--epochs", "6", "--batch-size", "64",
                        "--out", str(teacher), "--no-progress"])
    assert rc == 0 and teacher.is_file()
    syn = root / "random_ipc5"
    assert distill.main(["--method", "random", "--dataset", "digits", "--ipc", "5", "--out", str(syn)]) == 0
    return root, teacher, syn


def eval_args(teacher, syn, out, *extra, teacher_arch=ARCH):
    return ["--preset", "rd3-small", "--dataset", "digits", "--distilled", str(syn), "--teacher", teacher_arch,
            "--teacher-weights", str(teacher), "--student", ARCH, "--epochs", "3", "--seeds", "0",
            "--out", str(out), "--no-progress", *extra]


def test_pretrained_teacher_learns(work):
    _, teacher, _ = work
    meta = torch.load(teacher, weights_only=True)
    assert meta["arch"] == ARCH and meta["num_classes"] == 10 and meta["image_size"] == 16
    assert meta["val_top1"] > 85.0  # chance is 10 %


def test_distilled_folders(work, tmp_path):
    root, teacher, syn = work
    classes = sorted(p.name for p in syn.iterdir())
    assert classes == [f"{c:05d}" for c in range(10)]
    assert all(len(list((syn / c).glob("*.png"))) == 5 for c in classes)
    out = tmp_path / "rded"
    assert distill.main(["--method", "rded", "--dataset", "digits", "--ipc", "2", "--factor", "2", "--candidates",
                         "20", "--num-crop", "2", "--teacher", ARCH, "--teacher-weights", str(teacher),
                         "--out", str(out)]) == 0
    assert sum(1 for _ in out.rglob("*.png")) == 20
    assert distill.main(["--method", "random", "--dataset", "digits", "--ipc", "5", "--out", str(out)]) == 2


def test_evaluation_learns_and_writes_results(work, tmp_path, capsys):
    _, teacher, syn = work
    out = tmp_path / "res"
    assert run.main(eval_args(teacher, syn, out, "--epochs", "40", "--batch-size", "10", "--seeds", "0,1")) == 0
    printed = capsys.readouterr().out
    assert "| random_ipc5 | rd3-small |" in printed and "batch_size" in printed  # table + resolved config
    rec = json.loads((out / "results.json").read_text())
    # schema
    assert {"schema", "name", "config", "environment", "runs", "summary", "train_images", "val_images"} <= set(rec)
    assert rec["config"]["image_size"] == 16 and rec["config"]["num_classes"] == 10
    assert len(rec["config"]["mean"]) == 3 and rec["config"]["preset"] == "rd3-small"
    assert {"python", "torch", "device", "git_sha", "rd3fast"} <= set(rec["environment"])
    assert [r["seed"] for r in rec["runs"]] == [0, 1]
    for r in rec["runs"]:
        assert len(r["epochs"]) == 40 and all(e["loss"] > 0 and e["time_s"] > 0 for e in r["epochs"])
        assert [e["epoch"] for e in r["evals"]] == [10, 20, 30, 40]
        assert r["best_top1"] >= r["last_top1"] and 0 <= r["last_top5"] <= 100
    s = rec["summary"]["last_top1"]
    assert s["mean"] > 35.0, "a student distilled from a trained teacher must beat chance (10 %) by far"
    assert s["std"] >= 0 and (out / "curves.png").stat().st_size > 1000


def test_log_file_progress_is_one_line_per_evaluation(work, tmp_path, capsys):
    """stderr that is not a terminal (a Slurm log) gets plain lines, no bars; --no-progress gets nothing."""
    _, teacher, syn = work
    args = [a for a in eval_args(teacher, syn, tmp_path / "a", "--epochs", "4", "--eval-every", "2")
            if a != "--no-progress"]
    assert run.main(args) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if " epoch " in line]
    assert "\r" not in err and len(lines) == 2, err
    assert "epoch 2/4 loss" in lines[0] and "top-1" in lines[0] and "img/s ETA" in lines[0]
    assert run.main(args + ["--no-progress", "--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().err == ""
    rec = json.loads((tmp_path / "b" / "results.json").read_text())
    assert 0 < rec["runs"][0]["first_step_s"] < rec["runs"][0]["first_step_s"] + rec["runs"][0]["train_time_s"]


def test_same_seed_same_run(work):
    _, teacher, syn = work
    cfg = resolve("rd3-small", overrides=dict(dataset="digits", distilled=str(syn), teacher=(ARCH,),
                                              teacher_weights=(str(teacher),), student=ARCH, epochs=2))
    exp = prepare(cfg)
    a, _ = train(exp, 0, progress=False)
    b, _ = train(exp, 0, progress=False)
    c, _ = train(exp, 1, progress=False)
    assert [e["loss"] for e in a.epochs] == [e["loss"] for e in b.epochs]
    assert [e["loss"] for e in a.epochs] != [e["loss"] for e in c.epochs]


def test_hybrid_teachers_mse_gt_ema_and_rded_forward(work, tmp_path):
    _, teacher, syn = work
    other = tmp_path / "bn_teacher.pt"
    save_weights(other, build_model("convnet-d2-w8-bn", 10, 16), "convnet-d2-w8-bn", num_classes=10)
    cfg = resolve("edc", overrides=dict(dataset="digits", distilled=str(syn), teacher=(ARCH, "convnet-d2-w8-bn"),
                                        teacher_weights=(str(teacher), str(other)), student="convnet-d2-w8-bn",
                                        epochs=1, batch_size=25, rded_extra_forward=True))
    exp = prepare(cfg)
    result, model = train(exp, 0, progress=False)
    assert len(result.evals) == 1 and result.epochs[0]["loss"] > 0
    # RDED's extra no-grad forward is a second BatchNorm update per step
    assert int(model.features[1].num_batches_tracked) == 2 * 2
    exp.cfg = exp.cfg.replace(rded_extra_forward=False)
    _, model = train(exp, 0, progress=False)
    assert int(model.features[1].num_batches_tracked) == 2


def test_several_sets_side_by_side_equal_one_by_one(work, tmp_path, capsys):
    """Two distilled sets x two seeds as four students trained at once (one teacher pass per step): each
    run follows the trajectory of evaluating that set alone, and each set gets its own results folder."""
    root, teacher, syn = work
    other = tmp_path / "random_ipc5_seed7"
    assert distill.main(["--method", "random", "--dataset", "digits", "--ipc", "5", "--seed", "7",
                         "--out", str(other)]) == 0
    together = tmp_path / "together"
    assert run.main(eval_args(teacher, f"{syn},{other}", together, "--seeds", "0,1", "--parallel-seeds", "4")) == 0
    printed = capsys.readouterr().out
    assert "| random_ipc5 | rd3-small |" in printed and "| random_ipc5_seed7 | rd3-small |" in printed
    for name, path in (("random_ipc5", syn), ("random_ipc5_seed7", other)):
        alone = tmp_path / f"alone-{name}"
        assert run.main(eval_args(teacher, path, alone, "--seeds", "0,1")) == 0
        a = json.loads((alone / "results.json").read_text())
        t = json.loads((together / name / "results.json").read_text())
        assert t["name"] == name and t["config"]["distilled"] == str(path) and (together / name / "curves.png").is_file()
        for ra, rt in zip(a["runs"], t["runs"], strict=True):
            assert ra["seed"] == rt["seed"]
            for ea, et in zip(ra["epochs"], rt["epochs"], strict=True):
                assert abs(ea["loss"] - et["loss"]) <= 1e-4 * max(1.0, abs(ea["loss"]))
            assert abs(ra["last_top1"] - rt["last_top1"]) <= 1.0  # argmax ties may flip over 1e-5 logit noise
    # the two sets really were different inputs
    t0, t1 = (json.loads((together / n / "results.json").read_text()) for n in ("random_ipc5", "random_ipc5_seed7"))
    assert t0["runs"][0]["epochs"][0]["loss"] != t1["runs"][0]["epochs"][0]["loss"]


def test_several_sets_bad_input(work, tmp_path, capsys):
    root, teacher, syn = work
    small = tmp_path / "ipc3"
    assert distill.main(["--method", "random", "--dataset", "digits", "--ipc", "3", "--out", str(small)]) == 0
    nine = tmp_path / "nine"
    shutil.copytree(syn, nine)
    shutil.rmtree(nine / "00009")
    cases = [([f"{syn},{small}", "--parallel-seeds", "2"], "must have the same number of images"),
             ([f"{syn},{nine}"], "9 classes but 10 were expected"),
             ([f"{syn},{small}", "--name", "only-one"], "--name: 1 name(s) for 2 distilled set(s)")]
    for sets, message in cases:
        out = tmp_path / "out"
        assert run.main(eval_args(teacher, sets[0], out, *sets[1:])) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()


BAD = {
    "corrupt image": (lambda d, t: (d / "00003" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really"),
                      [], "broken.png"),
    "empty class": (lambda d, t: [p.unlink() for p in (d / "00004").iterdir()], [], "00004"),
    "class count": (lambda d, t: shutil.rmtree(d / "00009"), [], "10 classes but 9"),
    "mixed sizes": (lambda d, t: __import__("PIL.Image").Image.new("L", (9, 9)).save(d / "00001" / "z.png"),
                    [], "--load-size"),
    "teacher classes": (lambda d, t: save_weights(t, build_model(ARCH, 5, 16), ARCH, num_classes=5),
                        [], "5 outputs but the data has 10 classes"),
    "weights mismatch": (lambda d, t: None, [], "does not fit architecture 'convnet-d3-w16'"),
    "no weights": (lambda d, t: None, ["--teacher-weights", ""], "--teacher-weights"),
    "missing set": (lambda d, t: shutil.rmtree(d), [], "does not exist"),
    "bad value": (lambda d, t: None, ["--cutmix-beta", "-1"], "--cutmix-beta"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_and_writes_nothing(work, tmp_path, capsys, case):
    _, teacher, syn = work
    d, t = tmp_path / "syn", tmp_path / "teacher.pt"
    shutil.copytree(syn, d)
    shutil.copy(teacher, t)
    mutate, extra, message = BAD[case]
    mutate(d, t)
    out = tmp_path / "out"
    args = eval_args(t, d, out, *extra, teacher_arch="convnet-d3-w16" if case == "weights mismatch" else ARCH)
    if case == "no weights":
        i = args.index("--teacher-weights")
        args[i:i + 2] = []
    assert run.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("rd3fast: error:") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_subprocess_unknown_flag_and_list_presets():
    proc = subprocess.run([sys.executable, "-m", "rd3fast.run", "--epochz", "3"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--epochz" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "rd3fast.run", "--list-presets"], capture_output=True, text=True)
    assert proc.returncode == 0 and "| rd3 |" in proc.stdout and "| edc |" in proc.stdout


@pytest.mark.parametrize("preset", ["rded", "sre2l-cifar", "gvbsm"])
def test_val_folder_and_weights_file_under_presets(work, tmp_path, preset):
    """The issue's 'done when': a distilled ImageFolder + a val folder + a teacher weights file, any preset."""
    from rd3fast.prepare import export_folder

    _, teacher, syn = work
    val = export_folder("digits", tmp_path / "val", split="val", limit=6)
    out = tmp_path / "out"
    teachers = ",".join([ARCH] * (2 if preset == "gvbsm" else 1))
    weights = ",".join([str(teacher)] * (2 if preset == "gvbsm" else 1))
    rc = run.main(["--preset", preset, "--distilled", str(syn), "--val", str(val), "--image-size", "16",
                   "--val-resize-ratio", "1", "--mean", "0.3056", "--std", "0.3188", "--teacher", teachers,
                   "--teacher-weights", weights, "--student", ARCH, "--epochs", "2", "--batch-size", "10",
                   "--seeds", "0,1", "--parallel-seeds", "2", "--val-cache", str(tmp_path / "vc"),
                   "--out", str(out), "--no-progress"])
    assert rc == 0
    rec = json.loads((out / "results.json").read_text())
    assert rec["config"]["preset"] == preset and rec["val_images"] == 60 and len(rec["runs"]) == 2
    assert any((tmp_path / "vc").iterdir())  # the val folder was decoded once into the cache
