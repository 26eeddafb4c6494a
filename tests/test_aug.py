"""rd3fast.engine.aug: each op against torchvision / torch where they have it, hand-worked cases where they don't,
sampler statistics, and the composed pipeline. CPU only, tiny shapes."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from rd3fast.data import pixels
from rd3fast.engine import aug
from rd3fast.engine.aug import AugParams, AugSpec

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def u8(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w), generator=gen(seed), dtype=torch.uint8)


def one_box(top: int, left: int, h: int, w: int) -> torch.Tensor:
    return torch.tensor([[top, left, h, w]], dtype=torch.int32)


def plain_params(b: int, size: int, *, flip=None, partner=None, mix="none", mix_box=None, lam=1.0,
                 row_perm=None, col_perm=None, boxes=None) -> AugParams:
    return AugParams(
        boxes=torch.tensor([0, 0, size, size], dtype=torch.int32).repeat(b, 1) if boxes is None else boxes,
        flip=torch.zeros(b, dtype=torch.bool) if flip is None else flip,
        row_perm=row_perm, col_perm=col_perm,
        partner=torch.arange(b) if partner is None else partner,
        mix_box=torch.zeros(4, dtype=torch.int32) if mix_box is None else mix_box,
        lam=torch.tensor(lam, dtype=torch.float32), mix=mix)


# ---------------------------------------------------------------------------------------------------
# Ops vs torchvision / torch
# ---------------------------------------------------------------------------------------------------
def test_hflip_matches_torchvision_per_sample():
    x = torch.randn(4, 3, 5, 7, generator=gen(1))
    flip = torch.tensor([True, False, True, False])
    out = aug.hflip(x, flip)
    for i in range(4):
        ref = TF.hflip(x[i]) if flip[i] else x[i]
        assert torch.equal(out[i], ref)


# (image H, W), box (top, left, h, w), output size: down- and up-scaling, non-square boxes, odd ratios.
BOXES = [
    ((20, 24), (2, 3, 15, 9), 6),    # downscale, tall box
    ((20, 24), (0, 0, 20, 24), 7),   # whole non-square image, downscale, non-integer factor
    ((20, 24), (5, 1, 4, 11), 13),   # upscale rows, mixed on columns
    ((20, 24), (7, 9, 3, 5), 16),    # strong upscale
    ((20, 24), (1, 2, 17, 17), 17),  # identity scale on an inner box
    ((16, 16), (3, 0, 13, 16), 5),   # box touching the right edge
]


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("hw,box,size", BOXES)
def test_resized_crop_matches_torchvision(hw, box, size, antialias):
    x = u8(1, 3, *hw, seed=2)
    out = aug.resized_crop(x, one_box(*box), size, antialias)
    assert out.dtype == torch.float32 and out.shape == (1, 3, size, size)
    ref = TF.resized_crop(x[0].float(), *box, [size, size], interpolation=T.InterpolationMode.BILINEAR,
                          antialias=antialias)
    torch.testing.assert_close(out[0], ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("hw,box,size", BOXES)
def test_resized_crop_matches_interpolate_on_region(hw, box, size, antialias):
    x = u8(1, 2, *hw, seed=3)
    t, l, h, w = box
    out = aug.resized_crop(x, one_box(*box), size, antialias)
    ref = F.interpolate(x[:, :, t:t + h, l:l + w].float(), size=(size, size), mode="bilinear",
                        align_corners=False, antialias=antialias)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("antialias", [True, False])
def test_resized_crop_random_boxes_match_torchvision(antialias):
    """Random images, boxes and output sizes; float32 rounding stays far below one grey level."""
    g = gen(40)
    for k in range(30):
        hh, ww = torch.randint(4, 30, (2,), generator=g).tolist()
        t, l = int(torch.randint(0, hh, (), generator=g)), int(torch.randint(0, ww, (), generator=g))
        h, w = int(torch.randint(1, hh - t + 1, (), generator=g)), int(torch.randint(1, ww - l + 1, (), generator=g))
        size = int(torch.randint(1, 30, (), generator=g))
        x = u8(1, 1, hh, ww, seed=k)
        out = aug.resized_crop(x, one_box(t, l, h, w), size, antialias)
        ref = TF.resized_crop(x[0].float(), t, l, h, w, [size, size], antialias=antialias)
        torch.testing.assert_close(out[0], ref, atol=5e-4, rtol=0)


def test_resized_crop_batch_uses_each_samples_box():
    x = u8(3, 3, 20, 24, seed=4)
    boxes = torch.tensor([[2, 3, 15, 9], [0, 0, 20, 24], [7, 9, 3, 5]], dtype=torch.int32)
    out = aug.resized_crop(x, boxes, 8, True)
    for i in range(3):
        t, l, h, w = boxes[i].tolist()
        ref = F.interpolate(x[i:i + 1, :, t:t + h, l:l + w].float(), size=(8, 8), mode="bilinear",
                            align_corners=False, antialias=True)
        torch.testing.assert_close(out[i:i + 1], ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("antialias", [True, False])
def test_resample_weights_rows_sum_to_one_inside_image(antialias):
    start = torch.tensor([0, 3, 5])
    length = torch.tensor([20, 7, 2])
    m = aug.resample_weights(start, length, 20, 9, antialias)
    assert m.shape == (3, 9, 20)
    torch.testing.assert_close(m.sum(-1), torch.ones(3, 9))
    # nothing reads outside [start, start + length)
    for i in range(3):
        s, n = int(start[i]), int(length[i])
        assert m[i, :, :s].abs().sum() == 0 and m[i, :, s + n:].abs().sum() == 0


def test_normalize_matches_totensor_normalize():
    x = u8(2, 3, 5, 6, seed=5)
    out = pixels.normalize(x.float(), MEAN, STD)
    norm = T.Normalize(MEAN, STD)
    for i in range(2):
        ref = norm(x[i].float().div(255))
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)
    ev = pixels.eval_transform(x, MEAN, STD, dtype=torch.bfloat16)
    assert ev.dtype == torch.bfloat16
    torch.testing.assert_close(ev.float(), out.to(torch.bfloat16).float())


@pytest.mark.parametrize("antialias", [True, False])
def test_random_crop_with_padding_equals_pad_then_crop(antialias):
    x = u8(64, 3, 8, 10, seed=6)
    pad, size = 3, 8
    boxes = aug.sample_random_crop_boxes(64, 8, 10, size, pad, gen(7))
    assert (boxes[:, 0] < 0).any() and (boxes[:, 1] < 0).any()  # the test exercises the padded border
    out = aug.resized_crop(x, boxes, size, antialias)
    for i in range(64):
        t, l, h, w = boxes[i].tolist()
        ref = TF.crop(TF.pad(x[i], [pad], fill=0), t + pad, l + pad, h, w).float()
        assert torch.equal(out[i], ref), (i, boxes[i])


def test_random_crop_boxes_follow_torchvision_random_crop_stream():
    """batch 1: two randint draws, top then left — the same stream as torchvision RandomCrop.get_params."""
    pad, size = 2, 6
    for seed in range(20):
        img = torch.randint(0, 256, (3, 7, 9), generator=gen(100 + seed), dtype=torch.uint8)
        box = aug.sample_random_crop_boxes(1, 7, 9, size, pad, gen(seed))
        torch.manual_seed(seed)
        ref = T.RandomCrop(size, padding=pad)(img).float()
        out = aug.resized_crop(img[None], box, size, True)[0]
        assert torch.equal(out, ref)


def test_random_crop_boxes_bounds_and_errors():
    boxes = aug.sample_random_crop_boxes(2000, 8, 10, 8, 3, gen(8))
    top, left, h, w = boxes.T.long()
    assert (h == 8).all() and (w == 8).all()
    # top ~ U{0..8+6-8} - 3 = -3..3, left ~ U{0..10+6-8} - 3 = -3..5
    assert top.min() == -3 and top.max() == 3
    assert left.min() == -3 and left.max() == 5
    with pytest.raises(ValueError):
        aug.sample_random_crop_boxes(1, 4, 4, 12, 1, gen(0))


# ---------------------------------------------------------------------------------------------------
# PatchShuffle, hand-worked
# ---------------------------------------------------------------------------------------------------
def test_strip_index_values():
    perm = torch.tensor([[1, 0], [0, 1]])
    assert aug.strip_index(perm, 5).tolist() == [[2, 3, 0, 1], [0, 1, 2, 3]]
    perm3 = torch.tensor([[2, 0, 1]])
    assert aug.strip_index(perm3, 7).tolist() == [[4, 5, 0, 1, 2, 3]]
    assert aug.strip_index(perm3, 6).tolist() == [[4, 5, 0, 1, 2, 3]]


def test_patch_shuffle_4x4_by_hand():
    x = torch.arange(16).view(1, 1, 4, 4)
    # [[ 0  1  2  3]
    #  [ 4  5  6  7]
    #  [ 8  9 10 11]
    #  [12 13 14 15]]
    # col_perm [1, 0]: output column strip 0 <- input strip 1 (cols 2,3); strip 1 <- strip 0 (cols 0,1)
    # row_perm [1, 0]: same for rows.
    out = aug.patch_shuffle(x, torch.tensor([[1, 0]]), torch.tensor([[1, 0]]))
    assert out[0, 0].tolist() == [[10, 11, 8, 9],
                                  [14, 15, 12, 13],
                                  [2, 3, 0, 1],
                                  [6, 7, 4, 5]]
    # rows untouched, columns swapped
    out = aug.patch_shuffle(x, torch.tensor([[0, 1]]), torch.tensor([[1, 0]]))
    assert out[0, 0].tolist() == [[2, 3, 0, 1],
                                  [6, 7, 4, 5],
                                  [10, 11, 8, 9],
                                  [14, 15, 12, 13]]


def test_patch_shuffle_factor2_drops_remainder():
    x = torch.arange(35).view(1, 1, 5, 7)
    # rows 0..3 (strips {0,1},{2,3}), cols 0..5 (strips {0,1,2},{3,4,5}); row 4 and col 6 dropped
    out = aug.patch_shuffle(x, torch.tensor([[1, 0]]), torch.tensor([[1, 0]]))
    assert out.shape == (1, 1, 4, 6)
    rows, cols = [2, 3, 0, 1], [3, 4, 5, 0, 1, 2]
    expect = [[r * 7 + c for c in cols] for r in rows]
    assert out[0, 0].tolist() == expect
    ident = aug.patch_shuffle(x, torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    assert torch.equal(ident, x[:, :, :4, :6])
    assert AugSpec(size=4, mean=MEAN, std=STD, patch_shuffle=2).shuffled_size(5, 7) == (4, 6)
    assert AugSpec(size=4, mean=MEAN, std=STD, patch_shuffle=1).shuffled_size(5, 7) == (5, 7)


def test_patch_shuffle_factor3_per_sample_and_channel():
    x = torch.arange(2 * 2 * 7 * 8).view(2, 2, 7, 8)  # 7x8 -> 6x6 (strips of 2)
    row_perm = torch.tensor([[2, 0, 1], [0, 1, 2]])
    col_perm = torch.tensor([[1, 2, 0], [2, 1, 0]])
    out = aug.patch_shuffle(x, row_perm, col_perm)
    assert out.shape == (2, 2, 6, 6)
    rows = {0: [4, 5, 0, 1, 2, 3], 1: [0, 1, 2, 3, 4, 5]}
    cols = {0: [2, 3, 4, 5, 0, 1], 1: [4, 5, 2, 3, 0, 1]}
    for b in range(2):
        for c in range(2):
            expect = x[b, c][rows[b]][:, cols[b]]
            assert torch.equal(out[b, c], expect)


# ---------------------------------------------------------------------------------------------------
# CutMix / Mixup
# ---------------------------------------------------------------------------------------------------
def test_cutmix_pastes_partner_box():
    x = torch.randn(4, 3, 8, 8, generator=gen(9))
    partner = torch.tensor([2, 0, 3, 1])
    box = torch.tensor([1, 5, 2, 7], dtype=torch.int32)  # y1, y2, x1, x2
    p = plain_params(4, 8, partner=partner, mix="cutmix", mix_box=box, lam=1 - 4 * 5 / 64)
    out = aug.mix(x, p)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[1:5, 2:7] = True
    for i in range(4):
        assert torch.equal(out[i][:, inside], x[partner[i]][:, inside])
        assert torch.equal(out[i][:, ~inside], x[i][:, ~inside])
    assert torch.equal(x, torch.randn(4, 3, 8, 8, generator=gen(9)))  # input not modified in place


def test_mixup_exact():
    x = torch.randn(5, 3, 4, 4, generator=gen(10))
    partner = torch.tensor([4, 3, 0, 1, 2])
    lam = 0.37
    out = aug.mix(x, plain_params(5, 4, partner=partner, mix="mixup", lam=lam))
    lam_t = torch.tensor(lam, dtype=torch.float32)
    assert torch.equal(out, lam_t * x + (1 - lam_t) * x[partner])


def test_mix_none_is_identity():
    x = torch.randn(3, 3, 4, 4, generator=gen(11))
    assert torch.equal(aug.mix(x, plain_params(3, 4, partner=torch.tensor([1, 2, 0]))), x)


@pytest.mark.parametrize("hw", [(8, 8), (16, 12), (7, 9)])
def test_cutmix_box_lambda_and_bounds(hw):
    h, w = hw
    g = gen(12)
    for lam in torch.rand(300, generator=gen(13)).tolist() + [0.0, 1.0]:
        box, lam_area = aug.cutmix_box(h, w, lam, g)
        assert box.dtype == torch.int32 and box.shape == (4,)
        y1, y2, x1, x2 = box.tolist()
        assert 0 <= y1 <= y2 <= h and 0 <= x1 <= x2 <= w
        assert lam_area == pytest.approx(1 - (y2 - y1) * (x2 - x1) / (h * w))
        # sides are at most int(side * sqrt(1 - lam)) (even part of it, before clipping)
        assert y2 - y1 <= int(h * math.sqrt(1 - lam)) and x2 - x1 <= int(w * math.sqrt(1 - lam))
    box, lam_area = aug.cutmix_box(h, w, 1.0, g)
    assert lam_area == 1.0 and (box[1] - box[0]) * (box[3] - box[2]) == 0


def test_cutmix_area_fraction_statistics_beta1():
    """lam ~ U(0,1): unclipped E[area] = E[1 - lam] = 1/2; clipping at the border removes area.
    Continuous model: side c = sqrt(1-lam), expected clipped side c - c^2/4 with a uniform centre, so
    E[area] = E[(c - c^2/4)^2] = 1/2 - 1/5 + 1/48 ~= 0.321 (integer sides make it a bit smaller)."""
    size, n = 64, 4000
    g = gen(14)
    lams = torch.rand(n, generator=gen(15)).tolist()
    frac = [1 - aug.cutmix_box(size, size, lam, g)[1] for lam in lams]
    mean = sum(frac) / n
    assert mean < 0.5 - 0.1  # clipping must remove a visible share
    assert 0.28 < mean < 0.34, mean


# ---------------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------------
def _rrc_box_consistent(h, w, H, W, scale, ratio):
    """Some (target area, aspect) in range rounds to (w, h): w = round(sqrt(T a)), h = round(sqrt(T / a))."""
    area = H * W
    t_lo, t_hi = (w - 0.5) * (h - 0.5), (w + 0.5) * (h + 0.5)
    a_lo, a_hi = (w - 0.5) / (h + 0.5), (w + 0.5) / (h - 0.5)
    eps = 1e-9
    return (t_hi >= area * scale[0] - eps and t_lo <= area * scale[1] + eps
            and a_hi >= ratio[0] - eps and a_lo <= ratio[1] + eps)


@pytest.mark.parametrize("hw,scale,ratio", [((32, 32), (0.08, 1.0), (3 / 4, 4 / 3)),
                                            ((24, 40), (0.5, 1.0), (3 / 4, 4 / 3)),
                                            ((40, 24), (0.2, 0.6), (0.5, 2.0))])
def test_rrc_boxes_inside_and_in_range(hw, scale, ratio):
    H, W = hw
    boxes = aug.sample_rrc_boxes(3000, H, W, scale, ratio, gen(16))
    assert boxes.dtype == torch.int32 and boxes.shape == (3000, 4)
    top, left, h, w = boxes.T.long()
    assert (h > 0).all() and (w > 0).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    bad = [b for b in boxes.tolist() if not _rrc_box_consistent(b[2], b[3], H, W, scale, ratio)]
    # the only boxes allowed outside the ranges are the centre-crop fallback
    in_ratio = W / H
    fh, fw = (H, W) if ratio[0] <= in_ratio <= ratio[1] else (None, None)
    for b in bad:
        assert (b[2], b[3]) == (fh, fw) and (b[0], b[1]) == ((H - fh) // 2, (W - fw) // 2), b
    assert len(bad) < 30
    # placement is uniform over the free range: both ends are reached
    assert (top == 0).any() and (left == 0).any() and (top + h == H).any() and (left + w == W).any()


@pytest.mark.parametrize("hw,ratio", [((32, 32), (2.0, 3.0)), ((32, 32), (0.2, 0.5)),
                                      ((24, 40), (2.0, 2.5)), ((40, 24), (0.25, 0.5)),
                                      ((30, 20), (1.0, 1.2)), ((21, 33), (0.3, 0.45))])
def test_rrc_fallback_matches_torchvision(hw, ratio):
    H, W = hw
    boxes = aug.sample_rrc_boxes(16, H, W, (1.0, 1.0), ratio, gen(17))
    torch.manual_seed(0)
    ref = T.RandomResizedCrop.get_params(torch.zeros(1, H, W), [1.0, 1.0], list(ratio))
    assert boxes.tolist() == [list(ref)] * 16


def test_rrc_fallback_ratio_contains_image_ratio():
    # scale > 1 can never fit: fallback is the whole image when the image ratio is in range
    boxes = aug.sample_rrc_boxes(8, 20, 30, (1.5, 2.0), (1.0, 2.0), gen(18))
    assert boxes.tolist() == [[0, 0, 20, 30]] * 8
    torch.manual_seed(0)
    assert list(T.RandomResizedCrop.get_params(torch.zeros(1, 20, 30), [1.5, 2.0], [1.0, 2.0])) == [0, 0, 20, 30]


def test_rrc_area_uniform_when_never_rejected():
    # max side sqrt(0.5 * 4/3) < 1: every try is accepted, so area ~ U(0.1, 0.5), log ratio ~ U(log r)
    H = W = 96
    boxes = aug.sample_rrc_boxes(5000, H, W, (0.1, 0.5), (3 / 4, 4 / 3), gen(19)).double()
    frac = boxes[:, 2] * boxes[:, 3] / (H * W)
    assert abs(frac.mean().item() - 0.3) < 0.01
    assert abs(frac.std().item() - 0.4 / math.sqrt(12)) < 0.01
    hist = torch.histc(frac, bins=4, min=0.1, max=0.5)
    assert (hist / 5000 - 0.25).abs().max() < 0.03
    logr = torch.log(boxes[:, 3] / boxes[:, 2])
    assert abs(logr.mean().item()) < 0.01


def test_rrc_distribution_matches_torchvision_default_scale():
    """With rejections (scale up to 1), first-accepted-try statistics match torchvision's sampler."""
    H, W, n = 48, 64, 3000
    ours = aug.sample_rrc_boxes(n, H, W, (0.08, 1.0), (3 / 4, 4 / 3), gen(20)).double()
    torch.manual_seed(21)
    img = torch.zeros(1, H, W)
    ref = torch.tensor([T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)],
                       dtype=torch.float64)
    for b in (ours, ref):
        b[:, 0] += b[:, 2] / 2  # centres
        b[:, 1] += b[:, 3] / 2
    f_ours, f_ref = ours[:, 2] * ours[:, 3] / (H * W), ref[:, 2] * ref[:, 3] / (H * W)
    assert abs(f_ours.mean() - f_ref.mean()) < 0.025
    assert abs(f_ours.std() - f_ref.std()) < 0.025
    for k, tol in ((0, 1.0), (1, 1.3), (2, 1.0), (3, 1.3)):
        assert abs(ours[:, k].mean() - ref[:, k].mean()) < tol, k
    full_ours = ((ours[:, 2] == H) & (ours[:, 3] == W)).double().mean()
    full_ref = ((ref[:, 2] == H) & (ref[:, 3] == W)).double().mean()
    assert abs(full_ours - full_ref) < 0.01


def spec_(**kw) -> AugSpec:
    base = dict(size=8, mean=MEAN, std=STD)
    base.update(kw)
    return AugSpec(**base)


def test_flip_frequency_and_partner_permutation():
    spec = spec_(flip_p=0.3, crop="none")
    g = gen(22)
    flips = []
    for _ in range(50):
        p = aug.sample_params(spec, 200, 8, 8, g)
        assert p.flip.dtype == torch.bool and p.partner.dtype == torch.int64
        assert sorted(p.partner.tolist()) == list(range(200))
        flips.append(p.flip)
    rate = torch.cat(flips).double().mean().item()
    assert abs(rate - 0.3) < 0.015
    assert not aug.sample_params(spec_(flip_p=0.0), 64, 8, 8, g).flip.any()
    assert aug.sample_params(spec_(flip_p=1.0), 64, 8, 8, g).flip.all()


@pytest.mark.parametrize("f", [2, 3])
def test_patch_shuffle_perms_are_permutations_and_cover_all_orders(f):
    spec = spec_(patch_shuffle=f, crop="rrc", rrc_scale=(0.5, 1.0))
    p = aug.sample_params(spec, 400, 13, 14, gen(23))
    assert p.row_perm.shape == (400, f) and p.col_perm.shape == (400, f)
    assert p.row_perm.dtype == torch.int64
    for perm in (p.row_perm, p.col_perm):
        assert (perm.sort(dim=1).values == torch.arange(f)).all()
        seen = {tuple(r) for r in perm.tolist()}
        assert seen == set(itertools.permutations(range(f)))
    # boxes are in the coordinates of the shuffled (remainder-dropped) image
    h, w = 13 // f * f, 14 // f * f
    top, left, bh, bw = p.boxes.T.long()
    assert (top + bh <= h).all() and (left + bw <= w).all()
    assert aug.sample_params(spec_(patch_shuffle=1), 4, 8, 8, gen(0)).row_perm is None


@pytest.mark.parametrize("mix", ["cutmix", "mixup", "none"])
@pytest.mark.parametrize("crop", ["rrc", "random_crop", "none"])
def test_same_seed_same_params(mix, crop):
    spec = spec_(mix=mix, crop=crop, crop_padding=2, patch_shuffle=2)
    a = aug.sample_params(spec, 6, 10, 10, gen(24))
    b = aug.sample_params(spec, 6, 10, 10, gen(24))
    c = aug.sample_params(spec, 6, 10, 10, gen(25))
    fields = ("boxes", "flip", "row_perm", "col_perm", "partner", "mix_box", "lam")
    for name in fields:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.mix == b.mix
    assert any(not torch.equal(getattr(a, n), getattr(c, n)) for n in fields)


def test_crop_none_boxes_are_full_image():
    p = aug.sample_params(spec_(crop="none", patch_shuffle=2), 3, 9, 11, gen(0))
    assert p.boxes.tolist() == [[0, 0, 8, 10]] * 3


def test_mix_prob_zero_and_mix_none_never_mix():
    """A skipped batch has identity mixing parameters: lam 1, an empty box, and mixing is an exact no-op.
    (``mix`` may be "none" or the spec's mode: the spec keeps the mode for a static graph.)"""
    g = gen(26)
    x = u8(4, 3, 8, 8, seed=38)
    for spec in (spec_(mix="cutmix", mix_prob=0.0), spec_(mix="mixup", mix_prob=0.0), spec_(mix="none")):
        for k in range(10):
            p = aug.sample_params(spec, 4, 8, 8, g)
            assert p.mix in ("none", spec.mix)
            assert p.lam.item() == 1.0 and p.lam.dtype == torch.float32 and p.lam.dim() == 0
            assert p.mix_box.tolist() == [0, 0, 0, 0] and p.mix_box.dtype == torch.int32
            if k == 0:
                none = AugParams(p.boxes, p.flip, p.row_perm, p.col_perm, p.partner, p.mix_box, p.lam, "none")
                assert torch.equal(aug.augment(x, p, spec), aug.augment(x, none, spec))


def test_identity_mix_params_are_exact_noops():
    x = torch.randn(4, 3, 6, 6, generator=gen(39))
    partner = torch.tensor([3, 2, 1, 0])
    for mode in ("cutmix", "mixup"):
        assert torch.equal(aug.mix(x, plain_params(4, 6, partner=partner, mix=mode, lam=1.0)), x)


def test_mix_prob_half_and_lambdas():
    g = gen(27)
    cut = [aug.sample_params(spec_(mix="cutmix", mix_prob=0.5, size=32), 4, 32, 32, g) for _ in range(400)]
    rate = sum(p.lam.item() < 1.0 for p in cut) / 400
    assert abs(rate - 0.5) < 0.09
    for p in cut:
        y1, y2, x1, x2 = p.mix_box.tolist()
        assert 0 <= y1 <= y2 <= 32 and 0 <= x1 <= x2 <= 32  # box in OUTPUT coordinates (spec.size)
        assert p.lam.item() == pytest.approx(1 - (y2 - y1) * (x2 - x1) / 1024, abs=1e-6)
    mu = [aug.sample_params(spec_(mix="mixup", mixup_alpha=0.8), 4, 8, 8, g) for _ in range(1000)]
    lams = torch.stack([p.lam for p in mu])
    assert all(p.mix == "mixup" for p in mu)
    assert ((lams > 0) & (lams < 1)).all()
    # Beta(0.8, 0.8): mean 1/2, variance 1 / (4 * 2.6)
    assert abs(lams.mean().item() - 0.5) < 0.03
    assert abs(lams.var().item() - 1 / 10.4) < 0.007  # U(0,1) would give 1/12


# ---------------------------------------------------------------------------------------------------
# augment(): composition, dtype, layout, identity
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mix", ["cutmix", "mixup", "none"])
@pytest.mark.parametrize("crop,f", [("rrc", 2), ("random_crop", 1), ("none", 3)])
def test_augment_equals_ops_in_order(mix, crop, f):
    spec = spec_(size=6, patch_shuffle=f, crop=crop, crop_padding=2, mix=mix, mix_prob=1.0)
    x = u8(5, 3, 10, 11, seed=28)
    p = aug.sample_params(spec, 5, 10, 11, gen(29))
    assert p.mix == mix
    y = x
    if f > 1:
        y = aug.patch_shuffle(y, p.row_perm, p.col_perm)
    y = aug.resized_crop(y, p.boxes, 6, spec.antialias)
    y = aug.hflip(y, p.flip)
    y = pixels.normalize(y, MEAN, STD)
    y = aug.mix(y, p)
    out = aug.augment(x, p, spec)
    assert out.dtype == torch.float32 and out.shape == (5, 3, 6, 6)
    assert torch.equal(out, y)


def test_augment_composition_against_torchvision_per_sample():
    """One sample at a time through torchvision: crop+resize -> hflip -> Normalize(ToTensor)."""
    spec = spec_(size=7, crop="rrc", mix="none", antialias=True)
    x = u8(6, 3, 12, 10, seed=30)
    p = aug.sample_params(spec, 6, 12, 10, gen(31))
    out = aug.augment(x, p, spec)
    norm = T.Normalize(MEAN, STD)
    for i in range(6):
        t, l, h, w = p.boxes[i].tolist()
        r = TF.resized_crop(x[i].float(), t, l, h, w, [7, 7], antialias=True)
        if p.flip[i]:
            r = TF.hflip(r)
        torch.testing.assert_close(out[i], norm(r / 255), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [True, False])
def test_augment_dtype_and_layout(dtype, channels_last):
    spec = spec_(size=6, mix="mixup")
    x = u8(4, 3, 9, 9, seed=32)
    p = aug.sample_params(spec, 4, 9, 9, gen(33))
    out = aug.augment(x, p, spec, dtype=dtype, channels_last=channels_last)
    ref = aug.augment(x, p, spec)
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    if channels_last:
        assert out.stride()[1] == 1
    else:
        assert out.is_contiguous()
    assert torch.equal(out, ref.to(dtype))


@pytest.mark.parametrize("antialias", [True, False])
def test_augment_identity_params_is_normalize(antialias):
    spec = spec_(size=9, crop="none", flip_p=0.0, mix="none", patch_shuffle=1, antialias=antialias)
    x = u8(3, 3, 9, 9, seed=34)
    p = aug.sample_params(spec, 3, 9, 9, gen(35))
    assert p.boxes.tolist() == [[0, 0, 9, 9]] * 3 and not p.flip.any() and p.mix == "none"
    assert torch.equal(aug.augment(x, p, spec), pixels.normalize(x.float(), MEAN, STD))


def test_augment_flip_of_full_box_is_exact_mirror():
    spec = spec_(size=5, crop="none", mix="none")
    x = u8(2, 3, 5, 5, seed=36)
    p = plain_params(2, 5, flip=torch.tensor([True, False]))
    out = aug.augment(x, p, spec)
    ref = pixels.normalize(x.float(), MEAN, STD)
    assert torch.equal(out[0], ref[0].flip(-1)) and torch.equal(out[1], ref[1])


def test_params_to_keeps_values():
    p = aug.sample_params(spec_(patch_shuffle=2, mix="cutmix"), 3, 8, 8, gen(37))
    q = p.to("cpu")
    assert q.mix == p.mix and torch.equal(q.boxes, p.boxes) and torch.equal(q.row_perm, p.row_perm)
    r = aug.sample_params(spec_(), 3, 8, 8, gen(37)).to("cpu")
    assert r.row_perm is None and r.col_perm is None


def test_spec_from_config():
    from rd3fast.config import Config

    cfg = Config().replace(patch_shuffle=2, crop="random_crop", crop_padding=3, mix="mixup", mix_prob=0.25,
                           rrc_scale=(0.5, 1.0), antialias=False, flip_p=0.1)
    spec = AugSpec.from_config(cfg, 16, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert spec.size == 16 and spec.mean == (0.1, 0.2, 0.3) and spec.std == (0.4, 0.5, 0.6)
    assert (spec.patch_shuffle, spec.crop, spec.crop_padding, spec.mix, spec.mix_prob) == (2, "random_crop", 3,
                                                                                          "mixup", 0.25)
    assert spec.rrc_scale == (0.5, 1.0) and spec.antialias is False and spec.flip_p == 0.1
    # EDC builds the shuffled list but uses the unshuffled one: factor 1
    assert AugSpec.from_config(cfg.replace(edc_noop_shuffle=True), 16, (0.5,), (0.5,)).patch_shuffle == 1


def test_eval_normalize_equals_eval_transform_within_rounding():
    x = torch.randint(0, 256, (4, 3, 9, 7), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    torch.testing.assert_close(pixels.eval_normalize(x, mean, std), pixels.eval_transform(x, mean, std), rtol=1e-6, atol=1e-6)
