"""SRe2L recover and CDA (rd3fast.methods.recover) and their distill CLI, on digits with a small BatchNorm teacher."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rd3fast import distill
from rd3fast.data.sets import BUILTIN, ImageSet, load_distilled, load_real
from rd3fast.engine.models import build_model, save_weights
from rd3fast.errors import RD3Error
from rd3fast.methods.recover import Recipe, batch_slices, bn_loss, cosine_lr, crop_min_scale, recover

ARCH = "convnet-d2-w16-bn"
MEAN, STD = BUILTIN["digits"].mean, BUILTIN["digits"].std


@pytest.fixture(scope="module")
def real() -> ImageSet:
    return load_real("digits", "train")


@pytest.fixture(scope="module")
def teacher(real: ImageSet) -> torch.nn.Module:
    """A BN ConvNet trained for a few hundred steps on digits (over 85 % train accuracy): real running
    statistics, and a classifier worth following."""
    torch.manual_seed(0)
    model = build_model(ARCH, real.num_classes, 16)
    x = ((real.images.float() / 255 - MEAN[0]) / STD[0]).expand(-1, 3, -1, -1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        idx = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(model(x[idx]), real.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == real.labels).float().mean().item()
    assert acc > 0.85, acc
    return model


@pytest.fixture(scope="module")
def weights(teacher: torch.nn.Module, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "t.pt"
    save_weights(path, teacher, ARCH, num_classes=10, image_size=16, mean=list(MEAN), std=list(STD))
    return path


def teacher_accuracy(teacher: torch.nn.Module, syn: ImageSet) -> float:
    x = ((syn.images.float() / 255 - MEAN[0]) / STD[0]).expand(-1, 3, -1, -1)
    with torch.no_grad():
        return (teacher(x).argmax(1) == syn.labels).float().mean().item()


def test_recover_lowers_bn_loss_and_follows_the_class(teacher, real):
    recipe = Recipe(iterations=200)
    start = recover(teacher, real, 3, MEAN, STD, recipe=Recipe(iterations=0), progress=False)
    syn = recover(teacher, real, 3, MEAN, STD, recipe=recipe, progress=False)
    assert syn.images.dtype == torch.uint8 and syn.images.shape == (30, 1, 16, 16)  # grayscale stays gray
    assert syn.labels.tolist() == [c for c in range(10) for _ in range(3)]  # class-major
    before, after = bn_loss(teacher, start.images, MEAN, STD), bn_loss(teacher, syn.images, MEAN, STD)
    assert after < 0.5 * before, (before, after)
    assert teacher_accuracy(teacher, start) < 0.5  # noise is not (mostly) the target class ...
    assert teacher_accuracy(teacher, syn) >= 0.8  # ... the recovered images are
    assert teacher.training is False and all(p.requires_grad for p in teacher.parameters())  # left as found


def test_cda_recovers_too_and_real_init_starts_from_real_images(teacher, real):
    syn = recover(teacher, real, 2, MEAN, STD, recipe=Recipe(iterations=200, curriculum="cosine"), progress=False)
    # Most, not >= 80 % as SRe2L above: CDA optimizes random crops down to 8 % of the area, 4 x 4 pixels of
    # a 16 px digit, and is scored here on the whole image.
    assert teacher_accuracy(teacher, syn) > 0.5
    start = recover(teacher, real, 2, MEAN, STD, recipe=Recipe(iterations=0, init="real"), progress=False)
    for img, y in zip(start.images, start.labels):
        same_class = real.images[real.labels == y]
        assert (same_class == img).flatten(1).all(1).any()  # round-trips to a real image of its class


def test_cda_curriculum_follows_upstream():
    """CDA/recover_cda_in1k.py: min_crop 1 -> 0.08 over milestone * iterations, then 0.08."""
    T = 1000
    assert crop_min_scale(0, T, "cosine") == pytest.approx(1.0)
    assert crop_min_scale(250, T, "cosine") == pytest.approx(0.08 + 0.92 * (1 + math.cos(math.pi / 4)) / 2)
    assert crop_min_scale(500, T, "cosine") == pytest.approx(0.54)
    assert crop_min_scale(999, T, "cosine") == pytest.approx(0.08, abs=1e-4)
    assert crop_min_scale(250, T, "linear") == pytest.approx(0.77)
    assert crop_min_scale(500, T, "linear") == pytest.approx(0.54)
    assert crop_min_scale(999, T, "step") == 1.0
    assert crop_min_scale(250, T, "cosine", milestone=0.5) == pytest.approx(0.54)
    assert crop_min_scale(500, T, "cosine", milestone=0.5) == 0.08  # past the milestone
    assert crop_min_scale(0, T, "step", milestone=0.0) == 0.08  # upstream's argparse default: no curriculum
    assert crop_min_scale(0, T, None) == 0.08  # SRe2L: RandomResizedCrop's default scale
    # utils.py lr_cosine_policy(lr, 0, T), and upstream's batches (one IPC row per batch, chunked classes).
    assert (cosine_lr(0.1, 0, T), cosine_lr(0.1, 500, T)) == (pytest.approx(0.1), pytest.approx(0.05))
    imagenet = batch_slices(1000, 2, 100)
    assert imagenet[:2] == [slice(0, 100), slice(100, 200)] and len(imagenet) == 20
    assert batch_slices(10, 3, 4) == [slice(0, 4), slice(4, 8), slice(8, 10), slice(10, 14), slice(14, 18),
                                      slice(18, 20), slice(20, 24), slice(24, 28), slice(28, 30)]
    assert batch_slices(10, 5, 20) == [slice(0, 20), slice(20, 40), slice(40, 50)]  # whole IPC rows


def test_teacher_without_batchnorm_is_one_clear_error(real, tmp_path, capsys):
    with pytest.raises(RD3Error, match="teacher convnet-d2-w8 has no BatchNorm layer.*convnet-d3-bn"):
        recover(build_model("convnet-d2-w8", 10, 16), real, 1, MEAN, STD, arch="convnet-d2-w8", progress=False)
    path = tmp_path / "gn.pt"
    save_weights(path, build_model("convnet-d2-w8", 10, 16), "convnet-d2-w8", mean=list(MEAN), std=list(STD))
    out = tmp_path / "syn"
    rc = distill.main(["--method", "sre2l", "--dataset", "digits", "--ipc", "1", "--teacher", "convnet-d2-w8",
                       "--teacher-weights", str(path), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no BatchNorm layer" in err[0] and not out.exists()


def test_recover_flags_on_other_methods_are_errors(weights, tmp_path, capsys):
    base = ["--dataset", "digits", "--ipc", "1", "--out", str(tmp_path / "o")]
    assert distill.main(["--method", "random", "--lr", "0.2", *base]) == 2
    assert distill.main(["--method", "sre2l", "--milestone", "0.5", "--teacher", ARCH, "--teacher-weights",
                         str(weights), *base]) == 2
    assert distill.main(["--method", "cda", "--crop", "none", "--teacher", ARCH, "--teacher-weights",
                         str(weights), *base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--lr applies to --method sre2l and cda, not random" in err[0]
    assert "--milestone applies to --method cda" in err[1] and "needs the crop" in err[2]


def test_seed_determinism_and_cli_image_folder(teacher, real, weights, tmp_path, capsys):
    recipe = Recipe(iterations=5, curriculum="cosine")
    a = recover(teacher, real, 2, MEAN, STD, recipe=recipe, seed=3, progress=False)
    b = recover(teacher, real, 2, MEAN, STD, recipe=recipe, seed=3, progress=False)
    c = recover(teacher, real, 2, MEAN, STD, recipe=recipe, seed=4, progress=False)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    out = tmp_path / "cda"
    assert distill.main(["--method", "cda", "--dataset", "digits", "--ipc", "2", "--teacher", ARCH,
                         "--teacher-weights", str(weights), "--iterations", "5", "--seed", "3",
                         "--out", str(out), "--no-progress"]) == 0
    assert "wrote 20 images (cda, IPC 2)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [f"{c:05d}" for c in range(10)]
    assert len(list(out.rglob("*.png"))) == 20
    back = load_distilled(out)
    assert torch.equal(back.images[:, :1], a.images) and torch.equal(back.labels, a.labels)  # the same run


def test_crop_path_on_colour_images_with_class_chunks(capsys):
    """3-channel 36 px images (SRe2L crops above 32 px), batches of fewer images than classes, and the
    estimated time printed (off a terminal too) unless progress is off."""
    g = torch.Generator().manual_seed(0)
    real = ImageSet(torch.randint(0, 256, (12, 3, 36, 36), generator=g, dtype=torch.uint8),
                    torch.arange(4).repeat(3), list("abcd"), "tiny")
    model = build_model("convnet-d1-w8-bn", 4, 36)
    syn = recover(model, real, 2, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), recipe=Recipe(iterations=6, batch_size=3))
    assert syn.images.shape == (8, 3, 36, 36) and syn.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert "sre2l recover: 4 batch(es) x 6 iterations on cpu: about" in capsys.readouterr().err


def test_herding_and_kcenter_are_wired(weights, tmp_path):
    pytest.importorskip("rd3fast.methods.coreset")
    for method in ("herding", "kcenter"):
        out = tmp_path / method
        assert distill.main(["--method", method, "--dataset", "digits", "--ipc", "2", "--teacher", ARCH,
                             "--teacher-weights", str(weights), "--out", str(out), "--no-progress"]) == 0
        assert len(list(out.rglob("*.png"))) == 20


@pytest.mark.gpu
def test_recover_on_cuda_follows_the_class(teacher, real):
    """The same recover on the GPU: the teacher moves there, the images follow their class."""
    import copy

    gpu_teacher = copy.deepcopy(teacher)
    syn = recover(gpu_teacher, real, 3, MEAN, STD, recipe=Recipe(iterations=200), device="cuda", progress=False)
    assert syn.images.device.type == "cpu" and syn.images.shape == (30, 1, 16, 16)
    assert teacher_accuracy(teacher, syn) >= 0.8


def test_non_finite_images_are_an_error_not_black_pixels(teacher, real):
    """A teacher that yields NaN would clamp to black images that look like a result: it is an error."""
    import copy

    broken = copy.deepcopy(teacher)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    with pytest.raises(RD3Error, match="became NaN/inf"):
        recover(broken, real, 1, MEAN, STD, recipe=Recipe(iterations=2), progress=False)
