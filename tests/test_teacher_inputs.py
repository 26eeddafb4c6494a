"""Each teacher is fed inputs normalized as it was trained, whatever the run's normalization."""
from __future__ import annotations

import json

import pytest
import torch

from rd3fast.data.pixels import normalize
from rd3fast.engine.models import build_model, save_weights
from rd3fast.engine.teacher import load_teachers
from rd3fast.errors import RD3Error

FM = ((0.286,) * 3, (0.353,) * 3)  # what the teacher was trained with
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # what the run normalizes with (rded-small)


@pytest.fixture()
def pixels():
    return torch.randint(0, 256, (6, 3, 16, 16), generator=torch.Generator().manual_seed(0)).float()


def teacher_file(tmp_path, record: bool):
    torch.manual_seed(0)
    model = build_model("convnet-d2-w8", 10, 16).eval()
    path = tmp_path / ("recorded.pt" if record else "plain.pt")
    if record:
        save_weights(path, model, "convnet-d2-w8", mean=list(FM[0]), std=list(FM[1]))
    else:
        torch.save(model.state_dict(), path)
    return model, path


def test_teacher_sees_its_own_normalization(tmp_path, pixels):
    model, path = teacher_file(tmp_path, record=True)
    want = model(normalize(pixels, *FM))
    relabel = load_teachers(["convnet-d2-w8"], [path], 10, 16, torch.device("cpu"), input_mean=IMAGENET[0],
                            input_std=IMAGENET[1])
    got = relabel(normalize(pixels, *IMAGENET))
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(model(normalize(pixels, *IMAGENET)), want, atol=1e-2)  # the conversion matters
    [seen] = relabel.inputs
    assert seen["from"] == "the weights file" and seen["mean"] == pytest.approx(list(FM[0]))


def test_plain_state_dict_assumes_the_runs_unless_told(tmp_path, pixels):
    model, path = teacher_file(tmp_path, record=False)
    assumed = load_teachers(["convnet-d2-w8"], [path], 10, 16, torch.device("cpu"), input_mean=IMAGENET[0],
                            input_std=IMAGENET[1])
    assert assumed.inputs[0]["from"].startswith("assumed")
    x = normalize(pixels, *IMAGENET)
    assert torch.equal(assumed(x), model(x))  # no conversion at all
    told = load_teachers(["convnet-d2-w8"], [path], 10, 16, torch.device("cpu"), input_mean=IMAGENET[0],
                         input_std=IMAGENET[1], teacher_mean=(0.286,), teacher_std=(0.353,))
    assert torch.allclose(told(x), model(normalize(pixels, *FM)), atol=1e-4)
    assert told.inputs[0]["from"] == "--teacher-mean/--teacher-std"
    with pytest.raises(RD3Error, match="go together"):
        load_teachers(["convnet-d2-w8"], [path], 10, 16, torch.device("cpu"), input_mean=IMAGENET[0],
                      input_std=IMAGENET[1], teacher_mean=(0.286,))


def test_results_record_what_each_teacher_saw(tmp_path):
    from rd3fast import run
    from tests.test_run import ARCH

    torch.manual_seed(0)
    teacher = tmp_path / "t.pt"
    save_weights(teacher, build_model(ARCH, 10, 16), ARCH, mean=[0.3] * 3, std=[0.3] * 3)
    syn = tmp_path / "syn"
    from rd3fast import distill

    assert distill.main(["--method", "random", "--dataset", "digits", "--ipc", "2", "--out", str(syn)]) == 0
    out = tmp_path / "out"
    assert run.main(["--preset", "rded-small", "--dataset", "digits", "--distilled", str(syn), "--teacher", ARCH,
                     "--teacher-weights", str(teacher), "--student", ARCH, "--epochs", "1", "--seeds", "0",
                     "--out", str(out), "--no-progress"]) == 0
    [seen] = json.loads((out / "results.json").read_text())["teachers"]
    assert seen["mean"] == pytest.approx([0.3] * 3) and seen["from"] == "the weights file"
