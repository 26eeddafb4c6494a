"""rd3fast.engine.aug DSA mode: each family against a reference written the way DC/DSA/MTT's ``utils.py``
(``rand_scale``, ``rand_rotate``, ``rand_flip``, ``rand_brightness``/``rand_saturation``/``rand_contrast``,
``rand_crop``, ``rand_cutout``) computes it, fed the same drawn values; the sampler's distributions; the
composed ``augment``; and the standard mode's random stream, frozen before DSA was added. CPU, tiny shapes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rd3fast.data import pixels
from rd3fast.engine import aug
from rd3fast.engine.aug import DSA_FAMILIES, AugParams, AugSpec

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULT = "color_crop_cutout_flip_scale_rotate"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spec_(size: int = 8, strategy: str = DEFAULT, mix: str = "none", **kw) -> AugSpec:
    return AugSpec(size=size, mean=MEAN, std=STD, aug="dsa", dsa_strategy=strategy, mix=mix, **kw)


def params_for(op: str, b: int, h: int, w: int, seed: int = 0) -> AugParams:
    """Params whose family is ``op`` (drawn with a single-family strategy, so from the real sampler)."""
    fields = aug.sample_dsa((op,), b, h, w, gen(seed))
    return AugParams(boxes=torch.tensor([0, 0, h, w], dtype=torch.int32).repeat(b, 1),
                     flip=torch.zeros(b, dtype=torch.bool), row_perm=None, col_perm=None, partner=torch.arange(b),
                     mix_box=torch.zeros(4, dtype=torch.int32), lam=torch.tensor(1.0), mix="none", **fields)


def randn(b: int, c: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=gen(seed))


# ---------------------------------------------------------------------------------------------------
# References, written as upstream's utils.py computes each op (batchmode False), given the draws
# ---------------------------------------------------------------------------------------------------
def ref_scale(x, sx, sy):
    theta = [[[sx[i], 0, 0],
              [0, sy[i], 0]] for i in range(x.shape[0])]
    theta = torch.tensor(theta, dtype=torch.float)
    grid = F.affine_grid(theta, x.shape, align_corners=True).to(x.device)
    return F.grid_sample(x, grid, align_corners=True)


def ref_rotate(x, theta):
    theta = [[[torch.cos(theta[i]), torch.sin(-theta[i]), 0],
              [torch.sin(theta[i]), torch.cos(theta[i]), 0]] for i in range(x.shape[0])]
    theta = torch.tensor(theta, dtype=torch.float)
    grid = F.affine_grid(theta, x.shape, align_corners=True).to(x.device)
    return F.grid_sample(x, grid, align_corners=True)


def ref_flip(x, flip):
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def ref_color(x, draws):
    randb, rands, randc = (draws[:, i].reshape(-1, 1, 1, 1).to(x.dtype) for i in range(3))
    x = x + (randb - 0.5) * 1.0  # rand_brightness
    x_mean = x.mean(dim=1, keepdim=True)  # rand_saturation
    x = (x - x_mean) * (rands * 2.0) + x_mean
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)  # rand_contrast
    return (x - x_mean) * (randc + 0.5) + x_mean


def ref_crop(x, shift):
    translation_x = shift[:, 0].view(-1, 1, 1)
    translation_y = shift[:, 1].view(-1, 1, 1)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long), torch.arange(x.size(2), dtype=torch.long),
        torch.arange(x.size(3), dtype=torch.long), indexing="ij")
    grid_x = torch.clamp(grid_x + translation_x + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + translation_y + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)


def ref_cutout(x, centre):
    cutout_size = int(x.size(2) * 0.5 + 0.5), int(x.size(3) * 0.5 + 0.5)
    offset_x = centre[:, 0].view(-1, 1, 1)
    offset_y = centre[:, 1].view(-1, 1, 1)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long), torch.arange(cutout_size[0], dtype=torch.long),
        torch.arange(cutout_size[1], dtype=torch.long), indexing="ij")
    grid_x = torch.clamp(grid_x + offset_x - cutout_size[0] // 2, min=0, max=x.size(2) - 1)
    grid_y = torch.clamp(grid_y + offset_y - cutout_size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype)
    mask[grid_batch, grid_x, grid_y] = 0
    return x * mask.unsqueeze(1)


# ---------------------------------------------------------------------------------------------------
# Each family vs its reference
# ---------------------------------------------------------------------------------------------------
SHAPES = [(8, 8), (7, 7), (9, 6), (5, 12)]  # even/odd sides (cutout's k % 2), non-square (which axis is x)


@pytest.mark.parametrize("hw", SHAPES)
def test_scale_matches_upstream(hw):
    x = randn(6, 3, *hw)
    p = params_for("scale", 6, *hw)
    assert p.dsa_op == "scale" and p.dsa_scale.dtype == torch.float32 and p.dsa_scale.shape == (6, 2)
    ref = ref_scale(x, p.dsa_scale[:, 0], p.dsa_scale[:, 1])
    torch.testing.assert_close(aug.dsa(x, p), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hw", SHAPES)
def test_rotate_matches_upstream(hw):
    x = randn(6, 3, *hw)
    p = params_for("rotate", 6, *hw)
    assert p.dsa_theta.dtype == torch.float32 and p.dsa_theta.shape == (6,)
    torch.testing.assert_close(aug.dsa(x, p), ref_rotate(x, p.dsa_theta), rtol=1e-5, atol=1e-5)


def test_rotate_by_90_degrees_by_hand():
    # t = 90 degrees: theta = [[0, -1, 0], [1, 0, 0]], so with align_corners=True output (i, j) reads input
    # (j, W - 1 - i) on the pixel grid: torch.rot90 by +1 (cos(pi/2) is -4e-8 in float32, hence atol).
    x = torch.arange(16.0).view(1, 1, 4, 4)
    p = params_for("rotate", 1, 4, 4)
    p.dsa_theta = torch.tensor([math.pi / 2])
    out = aug.dsa(x, p)
    torch.testing.assert_close(out, ref_rotate(x, p.dsa_theta), rtol=0, atol=1e-5)
    torch.testing.assert_close(out, torch.rot90(x, 1, dims=(2, 3)), rtol=0, atol=1e-4)


@pytest.mark.parametrize("hw", SHAPES)
def test_flip_matches_upstream(hw):
    x = randn(16, 3, *hw)
    p = params_for("flip", 16, *hw)
    assert p.dsa_flip.dtype == torch.bool and 0 < int(p.dsa_flip.sum()) < 16
    assert torch.equal(aug.dsa(x, p), ref_flip(x, p.dsa_flip))


@pytest.mark.parametrize("hw", SHAPES)
def test_color_matches_upstream(hw):
    x = randn(6, 3, *hw)
    p = params_for("color", 6, *hw)
    assert p.dsa_color.dtype == torch.float32 and p.dsa_color.shape == (6, 3)
    assert torch.equal(aug.dsa(x, p), ref_color(x, p.dsa_color))


@pytest.mark.parametrize("hw", SHAPES)
def test_crop_matches_upstream(hw):
    x = randn(32, 2, *hw)
    p = params_for("crop", 32, *hw)
    assert p.dsa_shift.dtype == torch.int64 and p.dsa_shift.shape == (32, 2)
    assert torch.equal(aug.dsa(x, p), ref_crop(x, p.dsa_shift))
    # Beyond the sampled range too (the op is the upstream gather for any shift).
    p.dsa_shift = torch.tensor([[-20, 0], [0, 20], [hw[0], -hw[1]], [1, -1]] * 8)
    assert torch.equal(aug.dsa(x, p), ref_crop(x, p.dsa_shift))


def test_crop_is_a_translation_along_dim2_then_dim3():
    x = torch.arange(1.0, 21.0).view(1, 1, 4, 5)
    p = params_for("crop", 1, 4, 5)
    p.dsa_shift = torch.tensor([[1, -2]])  # dim 2 ("x" upstream) by +1, dim 3 by -2
    out = aug.dsa(x, p)[0, 0]
    expect = torch.zeros(4, 5)
    expect[:3, 2:] = x[0, 0, 1:, :3]
    assert torch.equal(out, expect)


@pytest.mark.parametrize("hw", SHAPES)
def test_cutout_matches_upstream(hw):
    x = randn(32, 2, *hw)
    p = params_for("cutout", 32, *hw)
    assert p.dsa_cutout.dtype == torch.int64 and p.dsa_cutout.shape == (32, 2)
    assert torch.equal(aug.dsa(x, p), ref_cutout(x, p.dsa_cutout))
    # Every reachable centre, including the edges where upstream's clamp folds the box.
    h, w = hw
    k2, k3 = aug.dsa_cutout_size(h, w)
    cy, cx = torch.meshgrid(torch.arange(h + (1 - k2 % 2)), torch.arange(w + (1 - k3 % 2)), indexing="ij")
    centres = torch.stack([cy.reshape(-1), cx.reshape(-1)], 1)
    xs = randn(len(centres), 1, h, w, seed=5)
    p.dsa_cutout = centres
    out = aug.dsa(xs, p)
    assert torch.equal(out, ref_cutout(xs, centres))
    zeroed = (out == 0).sum(dim=(1, 2, 3))
    assert int(zeroed.max()) == k2 * k3  # a whole box fits somewhere, and never more is cut


def test_cutout_box_by_hand():
    x = torch.ones(1, 1, 8, 6)
    p = params_for("cutout", 1, 8, 6)
    assert aug.dsa_cutout_size(8, 6) == (4, 3)
    p.dsa_cutout = torch.tensor([[5, 0]])  # rows 5-2 .. 5+1, cols clamp(0-1 .. 0+1) = 0..1
    expect = torch.ones(8, 6)
    expect[3:7, 0:2] = 0
    assert torch.equal(aug.dsa(x, p)[0, 0], expect)


def test_none_and_non_dsa_params_are_identity():
    x = randn(3, 3, 6, 6)
    p = params_for("flip", 3, 6, 6)
    for op in ("", "none"):
        p.dsa_op = op
        assert aug.dsa(x, p) is x
    p.dsa_op = "warp"
    with pytest.raises(ValueError, match="warp"):
        aug.dsa(x, p)


# ---------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------
def test_family_frequencies_uniform_over_strategy():
    g = gen(7)
    n = 6000
    counts = dict.fromkeys(DSA_FAMILIES, 0)
    for _ in range(n):
        counts[aug.sample_dsa(DSA_FAMILIES, 1, 8, 8, g)["dsa_op"]] += 1
    sigma = math.sqrt(n * (1 / 6) * (5 / 6))  # ~29
    for name, c in counts.items():
        assert abs(c - n / 6) < 5 * sigma, counts
    # A repeated family counts twice (upstream indexes the split list).
    g = gen(8)
    ops = [aug.sample_dsa(("crop", "crop", "flip"), 1, 8, 8, g)["dsa_op"] for _ in range(3000)]
    assert abs(ops.count("crop") / 3000 - 2 / 3) < 0.04


def test_scale_and_rotate_ranges():
    b = 20_000
    s = aug.sample_dsa(("scale",), b, 8, 8, gen(1))["dsa_scale"]
    assert float(s.min()) >= 1 / 1.2 - 1e-6 and float(s.max()) <= 1.2 + 1e-6
    assert float(s.min()) < 1 / 1.2 + 0.01 and float(s.max()) > 1.2 - 0.01
    assert abs(float(s.mean()) - (1 / 1.2 + 1.2) / 2) < 0.01
    assert abs(float(torch.corrcoef(s.T)[0, 1])) < 0.05  # sx, sy independent
    t = aug.sample_dsa(("rotate",), b, 8, 8, gen(2))["dsa_theta"]
    lim = 15 / 180 * math.pi
    assert float(t.abs().max()) <= lim + 1e-6 and float(t.abs().max()) > lim - 0.01
    assert abs(float(t.mean())) < 0.01
    assert abs(float(t.std()) - lim / math.sqrt(3)) < 0.01  # uniform on [-lim, lim]


@pytest.mark.parametrize("hw", [(32, 32), (28, 20), (7, 9)])
def test_crop_shift_range(hw):
    h, w = hw
    sh = aug.sample_dsa(("crop",), 5000, h, w, gen(3))["dsa_shift"]
    s2, s3 = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    assert set(sh[:, 0].tolist()) == set(range(-s2, s2 + 1))
    assert set(sh[:, 1].tolist()) == set(range(-s3, s3 + 1))


@pytest.mark.parametrize("hw", [(32, 32), (28, 20), (7, 9), (5, 6)])
def test_cutout_size_and_centre_range(hw):
    h, w = hw
    k2, k3 = aug.dsa_cutout_size(h, w)
    assert (k2, k3) == (int(h * 0.5 + 0.5), int(w * 0.5 + 0.5))
    c = aug.sample_dsa(("cutout",), 5000, h, w, gen(4))["dsa_cutout"]
    assert set(c[:, 0].tolist()) == set(range(0, h + (1 - k2 % 2)))
    assert set(c[:, 1].tolist()) == set(range(0, w + (1 - k3 % 2)))


def test_flip_half_and_color_draws_uniform():
    f = aug.sample_dsa(("flip",), 20_000, 8, 8, gen(5))["dsa_flip"]
    assert f.dtype == torch.bool and abs(float(f.float().mean()) - 0.5) < 0.02
    c = aug.sample_dsa(("color",), 20_000, 8, 8, gen(6))["dsa_color"]
    assert float(c.min()) >= 0 and float(c.max()) < 1
    assert torch.allclose(c.mean(0), torch.full((3,), 0.5), atol=0.01)
    assert float(torch.corrcoef(c.T).fill_diagonal_(0).abs().max()) < 0.05  # three separate draws


@pytest.mark.parametrize("op", DSA_FAMILIES)
def test_draws_are_per_sample_not_siamese(op):
    p = params_for(op, 64, 16, 16, seed=9)
    t = p.tensors()[{"scale": "dsa_scale", "rotate": "dsa_theta", "flip": "dsa_flip", "color": "dsa_color",
                     "crop": "dsa_shift", "cutout": "dsa_cutout"}[op]]
    assert len(torch.unique(t.reshape(64, -1).float(), dim=0)) > (1 if op == "flip" else 8)


def test_sample_params_dsa_fields_and_determinism():
    spec = spec_(8, mix="cutmix")
    seen = set()
    for seed in range(40):
        p = aug.sample_params(spec, 5, 8, 8, gen(seed))
        q = aug.sample_params(spec, 5, 8, 8, gen(seed))
        assert p.dsa_op == q.dsa_op and p.mix == "cutmix"
        for name, t in p.tensors().items():
            u = q.tensors()[name]
            assert (t is None and u is None) or torch.equal(t, u), name
        seen.add(p.dsa_op)
        # standard fields: identity
        assert p.row_perm is None and p.col_perm is None and not p.flip.any()
        assert torch.equal(p.boxes, torch.tensor([[0, 0, 8, 8]] * 5, dtype=torch.int32))
        assert sorted(p.partner.tolist()) == list(range(5))
        box = p.mix_box.tolist()
        assert 0 <= box[0] <= box[1] <= 8 and 0 <= box[2] <= box[3] <= 8
        # only the drawn family's tensor is set
        dsa_set = {n for n, t in p.tensors().items() if n.startswith("dsa_") and t is not None}
        assert len(dsa_set) == 1
    assert seen == set(DSA_FAMILIES)


def test_sample_params_draw_order():
    """family -> that family's draws -> the mixing draws (partner first), all from the one generator."""
    spec = spec_(8, strategy="crop_cutout", mix="mixup")
    p = aug.sample_params(spec, 6, 8, 8, gen(11))
    g = gen(11)
    fields = aug.sample_dsa(("crop", "cutout"), 6, 8, 8, g)
    assert fields["dsa_op"] == p.dsa_op
    key = "dsa_shift" if p.dsa_op == "crop" else "dsa_cutout"
    assert torch.equal(fields[key], getattr(p, key))
    assert torch.equal(torch.randperm(6, generator=g), p.partner)
    # strategy none: no family draw at all (upstream returns before drawing)
    p = aug.sample_params(spec_(8, strategy="none"), 6, 8, 8, gen(12))
    assert p.dsa_op == "none" and torch.equal(p.partner, torch.randperm(6, generator=gen(12)))


def test_strategy_validation_and_from_config():
    with pytest.raises(ValueError, match=r"'warp'.*color, crop, cutout, flip, scale, rotate"):
        spec_(8, strategy="color_warp")
    with pytest.raises(ValueError, match="''"):
        spec_(8, strategy="color__crop")
    with pytest.raises(ValueError, match="standard or dsa"):
        AugSpec(size=8, mean=MEAN, std=STD, aug="diffaug")
    assert aug.dsa_families("none") == () and aug.dsa_families(DEFAULT) == DSA_FAMILIES
    with pytest.raises(ValueError, match="own size"):
        aug.sample_params(spec_(8), 2, 10, 10, gen())
    from rd3fast.config import Config

    cfg = Config().replace(aug="dsa", dsa_strategy="crop_flip", crop="none", flip_p=0.0, patch_shuffle=1)
    spec = AugSpec.from_config(cfg, 8, MEAN, STD)
    assert spec.aug == "dsa" and spec.dsa_strategy == "crop_flip"
    assert AugSpec.from_config(Config(), 8, MEAN, STD).aug == "standard"


# ---------------------------------------------------------------------------------------------------
# augment, params plumbing, the standard stream
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mix", ["none", "cutmix", "mixup"])
def test_augment_dsa_uint8_is_dsa_of_normalized_then_mix(mix):
    spec = spec_(8, mix=mix)
    images = torch.randint(0, 256, (6, 3, 8, 8), generator=gen(2), dtype=torch.uint8)
    seen = set()
    for seed in range(30):
        p = aug.sample_params(spec, 6, 8, 8, gen(seed))
        seen.add(p.dsa_op)
        expect = aug.mix(aug.dsa(pixels.normalize(images.float(), MEAN, STD), p), p)
        assert torch.equal(aug.augment(images, p, spec), expect)
    assert seen == set(DSA_FAMILIES)


def test_augment_dsa_float_input_is_used_as_is():
    spec = spec_(8, mix="cutmix")
    x = randn(6, 3, 8, 8)  # model-space values (e.g. ZCA-whitened)
    for seed in range(12):
        p = aug.sample_params(spec, 6, 8, 8, gen(seed))
        assert torch.equal(aug.augment(x, p, spec), aug.mix(aug.dsa(x, p), p))
        assert torch.equal(aug.augment(x.double(), p, spec), aug.mix(aug.dsa(x, p), p))


@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.bfloat16, True)])
def test_augment_dsa_dtype_and_layout(dtype, channels_last):
    spec = spec_(8, mix="mixup")
    x = randn(4, 3, 8, 8)
    p = aug.sample_params(spec, 4, 8, 8, gen(3))
    out = aug.augment(x, p, spec, dtype=dtype, channels_last=channels_last)
    assert out.dtype == dtype and out.shape == (4, 3, 8, 8)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert torch.equal(out, aug.mix(aug.dsa(x, p), p).to(dtype))


def test_params_plumbing_keeps_dsa_fields():
    from rd3fast.engine.graph import _flatten, _unflatten

    p = aug.sample_params(spec_(8, strategy="color", mix="cutmix"), 4, 8, 8, gen(0))
    names = set(p.tensors())
    assert "mix" not in names and "dsa_op" not in names
    assert {"dsa_scale", "dsa_theta", "dsa_flip", "dsa_color", "dsa_shift", "dsa_cutout", "boxes"} <= names
    moved = p.to("cpu")
    assert moved.dsa_op == "color" and moved.mix == "cutmix" and torch.equal(moved.dsa_color, p.dsa_color)
    assert moved.dsa_scale is None
    idx = [torch.arange(4)]
    flat = _flatten(idx, [p], [])
    _, (back,), _ = _unflatten([t.clone() for t in flat], (idx, [p], []))
    assert back.dsa_op == "color" and torch.equal(back.dsa_color, p.dsa_color) and back.dsa_shift is None


# One sample_params draw of the standard mode, recorded with rd3fast/engine/aug.py as it was before DSA mode was
# added (seed 123, batch 4, 12 x 12 images, size 12), plus the generator's next draw: the standard path's
# random stream must not change.
FROZEN = [
    (dict(patch_shuffle=2, crop="rrc", mix="cutmix"), dict(
        boxes=[[1, 4, 5, 4], [3, 0, 9, 11], [4, 2, 8, 10], [2, 1, 10, 10]],
        flip=[False, False, True, True], row_perm=[[0, 1], [0, 1], [0, 1], [0, 1]],
        col_perm=[[0, 1], [0, 1], [0, 1], [1, 0]], partner=[0, 3, 1, 2], mix_box=[0, 8, 0, 6],
        lam=0.6666666865348816), 1031855169),
    (dict(crop="random_crop", crop_padding=4, mix="mixup"), dict(
        boxes=[[0, -3, 12, 12], [-3, 1, 12, 12], [-1, -4, 12, 12], [-4, -2, 12, 12]],
        flip=[True, False, True, False], row_perm=None, col_perm=None, partner=[2, 0, 1, 3],
        mix_box=[0, 0, 0, 0], lam=0.8925911784172058), 1722357280),
]


@pytest.mark.parametrize("kw,expect,after", FROZEN)
def test_standard_stream_unchanged(kw, expect, after):
    spec = AugSpec(size=12, mean=MEAN, std=STD, **kw)
    g = gen(123)
    p = aug.sample_params(spec, 4, 12, 12, g)
    got = {k: (None if v is None else v.tolist()) for k, v in p.tensors().items()}
    for k, v in expect.items():
        assert got.pop(k) == v, k
    assert all(v is None for v in got.values()), got  # the DSA fields stay unset
    assert p.dsa_op == "" and p.mix == kw["mix"]
    assert int(torch.randint(0, 2**31, (), generator=g)) == after
