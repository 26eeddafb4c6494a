"""Grayscale sets as DC/DM/MTT evaluate them (--gray-channels 1, the mtt/datm presets' value): one input
channel, and MTT's ConvNet rule (networks.py: first conv padding 3 when channel == 1), so a 28 px
Fashion-MNIST image reaches the classifier as 4 x 4, as a 32 px CIFAR image does."""
from __future__ import annotations

import json

import torch

from rd3fast import distill, pretrain, run
from rd3fast.config import PRESETS, resolve
from rd3fast.engine.experiment import prepare
from rd3fast.engine.models import build_model

ARCH = "convnet-d2-w8"


def test_mtt_convnet_rule_on_28_px() -> None:
    one = build_model("convnet-d3", 10, 28, in_chans=1)
    assert one.features[0].in_channels == 1 and one.features[0].padding == (3, 3)
    assert one.features(torch.zeros(2, 1, 28, 28)).shape == (2, 128, 4, 4)
    assert one.classifier.in_features == 128 * 4 * 4 and one(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    three = build_model("convnet-d3", 10, 28)  # 3 channels: padding 1 everywhere, 28 -> 14 -> 7 -> 3
    assert three.features[0].padding == (1, 1) and three.classifier.in_features == 128 * 3 * 3


def test_presets_that_keep_gray_sets_one_channel() -> None:
    assert resolve("mtt").gray_channels == 1 and resolve("datm").gray_channels == 1
    assert all(resolve(name).gray_channels == 3 for name in PRESETS if name not in ("mtt", "datm"))


def test_gray_run_trains_a_one_channel_student(tmp_path) -> None:
    """digits under --gray-channels 1: the experiment keeps one channel (train, val, one mean/std value),
    the student's first conv takes one channel, the 3-channel teacher sees the batch repeated to three,
    and the run ends with a result; colour sets are untouched by the flag."""
    assert pretrain.main(["--dataset", "digits", "--arch", ARCH, "--epochs", "1", "--batch-size", "64",
                          "--out", str(tmp_path / "t.pt"), "--no-progress"]) == 0
    assert distill.main(["--method", "random", "--dataset", "digits", "--ipc", "3",
                         "--out", str(tmp_path / "syn"), "--no-progress"]) == 0
    cfg = resolve("rd3-small", overrides=dict(dataset="digits", distilled=str(tmp_path / "syn"), teacher=(ARCH,),
                                              teacher_weights=(str(tmp_path / "t.pt"),), student=ARCH,
                                              gray_channels=1, device="cpu"))
    exp = prepare(cfg, progress=False)
    assert exp.channels == 1 and exp.train.images.shape[1] == 1 and exp.val.images.shape[1] == 1
    assert len(exp.cfg.mean) == 1 and len(exp.cfg.std) == 1
    assert prepare(cfg.replace(gray_channels=3), progress=False).channels == 3
    out = tmp_path / "out"
    assert run.main(["--preset", "rd3-small", "--dataset", "digits", "--distilled", str(tmp_path / "syn"),
                     "--teacher", ARCH, "--teacher-weights", str(tmp_path / "t.pt"), "--student", ARCH,
                     "--gray-channels", "1", "--epochs", "2", "--batch-size", "10", "--out", str(out),
                     "--no-progress"]) == 0
    rec = json.loads((out / "results.json").read_text())
    assert rec["config"]["gray_channels"] == 1 and rec["runs"][0]["status"] == "ok"
