"""rd3fast.ddranking: DD-Ranking's compute_metrics API on a sweep it writes itself.

On the built-in digits (16 px, 10 classes), IPC 2, a two-block width-8 ConvNet and a random-init teacher,
2 seeds, 2 epochs: the numbers mean nothing, the plumbing is what is tested. The expected values are
recomputed here from the runs' results.json files, independently of board/cells: the lr chosen per set and
role by the mean held-out top-1 over seeds, then rd3fast.bench.scores' arithmetic.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import rd3fast.ddranking as ddr
from rd3fast.bench import scores
from rd3fast.data.datasets import BUILTIN
from rd3fast.data.pixels import normalize
from rd3fast.data.sets import load_real
from rd3fast.engine.models import build_model, save_weights
from rd3fast.errors import RD3Error
from rd3fast.methods.coreset import random_real

ARCH = "convnet-d2-w8"
GRID = [0.01, 0.05]
COMMON = dict(dataset="digits", ipc=2, model_name=ARCH, num_eval=2, num_epochs=2, optimizer="adamw",
              lr_scheduler="cosineannealing", eval_full_data=True, real={"epochs": 1}, lr_grid=GRID, device="cpu",
              parallel_seeds=4, progress=False)
LRS_KEYS = ("hard_label_recovery", "improvement_over_random", "label_robust_score")
ARS_KEYS = ("with_aug", "without_aug", "with_aug_scores", "without_aug_scores", "augmentation_robust_score")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    base = tmp_path_factory.mktemp("ddranking")
    torch.manual_seed(0)
    save_weights(base / "teacher.pt", build_model(ARCH, 10, 16), ARCH, num_classes=10, image_size=16)
    syn = random_real(load_real("digits", "train"), 2, seed=5)
    info = BUILTIN["digits"]
    # DD-Ranking's input convention: float tensors normalized with the dataset's mean/std, class i // ipc
    return base, normalize(syn.images.float(), info.mean[:1], info.std[:1])


@pytest.fixture(scope="module")
def first(inputs: tuple[Path, torch.Tensor]) -> dict:
    base, x = inputs
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)  # the default root, runs/ddranking/<hash>, is relative to the working directory
        return ddr.compute_metrics(x, teacher_weights="teacher.pt", **COMMON)


def from_results(root: str | Path) -> tuple[dict, dict]:
    """(set, role) -> seed -> test top-1 at the lr with the best mean held-out top-1, and (set, role) -> lr."""
    runs: dict = {}
    for entry in json.loads((Path(root) / "plan.json").read_text())["runs"]:
        res = json.loads((Path(root) / "runs" / entry["id"] / "results.json").read_text())["run"]
        lr = entry["grid"].get("lr")
        runs.setdefault((entry["set"]["name"], entry["role"]), {}).setdefault(lr, {})[entry["seed"]] = res
    acc, chosen = {}, {}
    for key, by_lr in runs.items():
        lrs = [lr for lr in GRID if lr in by_lr] or list(by_lr)
        best = max(lrs, key=lambda lr: np.mean([r.get("last_heldout_top1") or 0 for r in by_lr[lr].values()]))
        chosen[key] = best
        acc[key] = {s: r["last_top1"] for s, r in by_lr[best].items()}
    return acc, chosen


def check(out: dict, name: str, per_seed: dict) -> None:
    values = list(per_seed.values())
    assert out[f"{name}_mean"] == pytest.approx(np.mean(values))
    assert out[f"{name}_std"] == pytest.approx(np.std(values))  # ddof 0, as DD-Ranking
    lo, hi = out[f"{name}_ci95"]
    assert min(values) - 1e-9 <= lo <= hi <= max(values) + 1e-9
    assert out["per_seed"][name] == pytest.approx(per_seed)


def test_keys_and_values_are_rd3fast_scores_of_the_runs(first: dict) -> None:
    for name in LRS_KEYS + ARS_KEYS:
        assert {f"{name}_mean", f"{name}_std", f"{name}_ci95"} <= set(first)
    assert {"lr", "lr_random", "real_hard", "root", "seeds", "heldout_size", "per_seed"} <= set(first)
    acc, _ = from_results(first["root"])
    real = acc[("digits (train)", "real")]
    per = scores.per_seed_scores(acc[("syn", "")], acc[("random", "")], acc[("syn", "hard")], real,
                                 acc[("syn", "naug")], acc[("random", "naug")])
    assert first["real_hard"] == pytest.approx(np.mean(list(real.values())))
    for name, key in (("hard_label_recovery", "hlr"), ("improvement_over_random", "ior"), ("label_robust_score", "lrs"),
                      ("with_aug_scores", "aug_gain"), ("without_aug_scores", "naug_gain"),
                      ("augmentation_robust_score", "ars")):
        assert len(per[key]) == 2
        check(first, name, per[key])
    check(first, "with_aug", acc[("syn", "")])
    check(first, "without_aug", acc[("syn", "naug")])
    toml = (Path(first["root"]) / "sweep.toml").read_text()
    assert 'mode = "heldout"' in toml and "lr = [0.01, 0.05]" in toml and 'naug = "mix"' in toml


def test_lr_is_chosen_on_the_heldout_split(first: dict) -> None:
    _, chosen = from_results(first["root"])
    assert first["lr"] in GRID and first["lr"] == chosen[("syn", "")]
    assert first["lr_random"] == chosen[("random", "")]
    assert first["heldout_size"] == 120  # 10 % of digits' 1257 training images, a multiple of 10 classes
    run = json.loads(next((Path(first["root"]) / "runs").glob("*/run.json")).read_text())
    assert run["heldout"] is None or run["heldout"]["size"] == 120


def test_rerun_and_the_classes_train_nothing(first: dict, inputs: tuple[Path, torch.Tensor],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    base, x = inputs
    results = sorted((Path(first["root"]) / "runs").glob("*/results.json"))
    mtimes = [p.stat().st_mtime_ns for p in results]

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rerun trained something")

    monkeypatch.setattr(ddr, "run_groups", no_training)
    monkeypatch.chdir(base)
    again = ddr.compute_metrics(x, teacher_weights="teacher.pt", **COMMON)
    assert again["root"] == first["root"] and Path(first["root"]).parent == base / "runs" / "ddranking"
    assert {k: v for k, v in again.items() if k != "per_seed"} == {k: v for k, v in first.items() if k != "per_seed"}
    # The classes with the same settings read the same runs (the root is what decides the runs).
    kwargs = dict(COMMON, teacher_weights="teacher.pt", soft_label_mode="M")
    lrs = ddr.LabelRobustScoreSoft(**kwargs).compute_metrics(image_tensor=x)
    ars = ddr.AugmentationRobustScore(SimpleNamespace(config=kwargs)).compute_metrics(image_tensor=x, ars_lambda=0.5)
    assert lrs["root"] == ars["root"] == first["root"]
    for name in LRS_KEYS:
        assert lrs[f"{name}_mean"] == pytest.approx(first[f"{name}_mean"]) and f"{name}_mean" not in ars
    for name in ARS_KEYS:
        assert ars[f"{name}_mean"] == pytest.approx(first[f"{name}_mean"]) and f"{name}_mean" not in lrs
    assert [p.stat().st_mtime_ns for p in results] == mtimes


def test_soft_labels_and_a_given_lr(inputs: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    """soft_label_mode 'S': the set's own soft labels, the random set with the teacher's logits; syn_lr: no grid."""
    base, x = inputs
    soft = torch.nn.functional.one_hot(torch.arange(20) // 2, 10).float() * 5
    soft[0] = torch.nn.functional.one_hot(torch.tensor(3), 10).float() * 5  # a teacher misreading image 0
    evaluator = ddr.LabelRobustScoreSoft(**dict(COMMON, teacher_weights=str(base / "teacher.pt"),
                                                save_path=str(tmp_path / "scores.csv")))
    out = evaluator.compute_metrics(image_tensor=x, soft_labels=soft, syn_lr=torch.tensor(0.02))
    assert out["lr"] == out["lr_random"] == pytest.approx(0.02) and out["heldout_size"] is None
    [syn_set] = (tmp_path / "scores" / "sets").glob("syn-*.pt")
    held = torch.load(syn_set)  # image 0 keeps its class 0 (DD-Ranking's i // ipc) beside the soft labels
    assert held["labels"].tolist() == (torch.arange(20) // 2).tolist() and torch.equal(held["soft_labels"], soft)
    assert out["root"] == str((tmp_path / "scores").absolute())
    toml = (tmp_path / "scores" / "sweep.toml").read_text()
    assert 'label_source = "set"' in toml and "[grid]" not in toml and "[select]" not in toml
    [random_set] = (tmp_path / "scores" / "sets").glob("random-*")
    assert torch.load(random_set)["soft_labels"].shape == (20, 10)  # the teacher's logits
    assert (tmp_path / "scores.csv").read_text().splitlines()[0] == "hard_label_recovery,improvement_over_random,lrs"
    acc, _ = from_results(out["root"])
    per = scores.per_seed_scores(acc[("syn", "")], acc[("random", "")], acc[("syn", "hard")],
                                 acc[("digits (train)", "real")])
    check(out, "label_robust_score", per["lrs"])


def test_hard_labels(inputs: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    """LabelRobustScoreHard: cross-entropy throughout, no teacher: the sweep has no [[teachers]]."""
    _, x = inputs
    out = ddr.LabelRobustScoreHard(**dict(COMMON, save_path=str(tmp_path))).compute_metrics(image_tensor=x,
                                                                                             syn_lr=0.05)
    toml = (tmp_path / "sweep.toml").read_text()
    assert 'loss = "ce"' in toml and "use_aug_for_hard = true" in toml and "[[teachers]]" not in toml
    acc, _ = from_results(out["root"])
    per = scores.per_seed_scores(acc[("syn", "")], acc[("random", "")], acc[("syn", "hard")],
                                 acc[("digits (train)", "real")])
    check(out, "hard_label_recovery", per["hlr"])
    check(out, "improvement_over_random", per["ior"])


@pytest.mark.parametrize("change, named", [
    (dict(num_epoch=3), "num_epoch"),
    (dict(soft_labels=torch.zeros(19, 10)), "soft_labels"),
    (dict(soft_labels=torch.zeros(20, 10), soft_label_mode="M"), "soft_labels"),
    (dict(soft_labels=torch.full((20, 10), float("nan"))), "soft_labels"),
    (dict(model_name="VGG-11"), "model_name"),
    (dict(model_name="no-such-net"), "model_name"),
    (dict(image_tensor=slice(0, 19)), "image_tensor"),
    (dict(dataset="CIFAR-10"), "dataset"),
    (dict(aug_params={"cutmix_p": 1.0}), "aug_params"),
    (dict(lr_scheduler="step"), "step_size"),
    (dict(custom_train_trans=[{"name": "ToTensor"}]), "custom_train_trans"),
    (dict(data_aug_func="cutmix", use_zca=True), "use_zca"),
    (dict(eval_full_data=False), "eval_full_data"),
    (dict(teacher_weights=None), "teacher"),
])
def test_bad_input_is_one_error_naming_the_argument(change: dict, named: str, inputs: tuple[Path, torch.Tensor],
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, x = inputs
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ddr, "run_groups", lambda *a, **k: pytest.fail("trained despite bad input"))
    kwargs = dict(COMMON, teacher_weights=str(base / "teacher.pt"), image_tensor=x)
    kwargs.update(change)
    if isinstance(kwargs["image_tensor"], slice):
        kwargs["image_tensor"] = x[kwargs["image_tensor"]]
    with pytest.raises(RD3Error) as e:
        ddr.compute_metrics(**kwargs)
    assert named in str(e.value) and "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())  # refused before anything was written
