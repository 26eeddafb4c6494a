"""rd3fast.kernels (Triton) against the torch specification rd3fast.engine.aug.

Tolerances (the contract stated in kernels/augment.py):
- exact (torch.equal) for everything that only moves or picks pixels: the gather by idx, PatchShuffle,
  flip, CutMix, Mixup blending, normalization, patch_shuffle_u8, normalize_u8, and whole-pipeline outputs
  whose boxes are the full (shuffled) image with out size == image size (bilinear is then the identity);
- atol 1e-4 (rtol 0) on normalized float32 output wherever bilinear weights are summed (the kernel adds
  taps in another order than the spec's two matmuls; observed error is < 1e-6);
- bfloat16 / float16 output: bitwise equal to the kernel's own float32 output cast by torch (round to
  nearest even), and within one bf16/fp16 ulp of the spec's output cast.

On a machine without CUDA these run under TRITON_INTERPRET=1 (tests/conftest.py) at tiny sizes. The
``gpu``-marked tests (deselected by default, run by benchmarks/gpu_check.sh) repeat the comparisons on
CUDA at 224 px, batch 256.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rd3fast.kernels import (
    crop_resize_flip_normalize,
    fused_augment,
    interpreted,
    max_taps,
    normalize_u8,
    patch_shuffle_u8,
)

from rd3fast.data import pixels
from rd3fast.engine import aug
from rd3fast.engine.aug import AugParams, AugSpec

MEAN3, STD3 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MEAN1, STD1 = (0.5,), (0.25,)
ATOL = 1e-4  # normalized float32, resampled outputs


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def u8(n: int, c: int, h: int, w: int, seed: int = 0, device="cpu") -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), generator=gen(seed), dtype=torch.uint8).to(device)


def spec_(size: int, c: int = 3, **kw) -> AugSpec:
    mean, std = (MEAN3, STD3) if c == 3 else (MEAN1, STD1)
    return AugSpec(size=size, mean=mean, std=std, **kw)


def identity_params(spec: AugSpec, b: int, h: int, w: int, seed: int, mix: str = "none") -> AugParams:
    """Random shuffle / flip / partner / mix, but each box is the whole shuffled image (needs H' == W' == S)."""
    p = aug.sample_params(AugSpec(**{**spec.__dict__, "crop": "none", "mix": mix, "mix_prob": 1.0}), b, h, w,
                          gen(seed))
    assert p.mix == mix
    return p


def idx_for(n: int, b: int, seed: int) -> torch.Tensor:
    return torch.randint(0, n, (b,), generator=gen(seed + 1000))  # repeats allowed, unsorted


def spec_out(images, idx, params, spec, dtype=torch.float32, channels_last=False):
    return aug.augment(images[idx], params, spec, dtype=dtype, channels_last=channels_last)


# ---------------------------------------------------------------------------------------------------
# Exact: index-moving parts with identity boxes
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor,antialias", [(1, True), (2, False), (3, True)])
@pytest.mark.parametrize("mix", ["none", "cutmix", "mixup"])
def test_identity_boxes_exact(factor, antialias, mix):
    """33x33 images: factor 2 drops a remainder row/column (S = 32), factor 3 does not (S = 33)."""
    n, b, hw = 7, 5, 33
    s = hw // factor * factor
    spec = spec_(s, patch_shuffle=factor, antialias=antialias, mix=mix)
    images = u8(n, 3, hw, hw, seed=factor)
    p = identity_params(spec, b, hw, hw, seed=10 * factor + len(mix), mix=mix)
    p.flip[:2] = torch.tensor([True, False])  # both directions present whatever the draw
    idx = idx_for(n, b, factor)
    out = fused_augment(images, idx, p, spec)
    assert out.dtype == torch.float32 and out.shape == (b, 3, s, s) and out.is_contiguous()
    assert torch.equal(out, spec_out(images, idx, p, spec))


def test_cutmix_box_edges_and_empty_exact():
    n, b, s = 4, 4, 16
    spec = spec_(s, patch_shuffle=2, mix="cutmix")
    images = u8(n, 3, s, s, seed=3)
    idx = torch.tensor([3, 0, 2, 1])
    # block (8, 8): 2 x 2 tiles per image, so tiles wholly inside, wholly outside and cut by the box occur
    for box, block in (([0, 16, 0, 16], None), ([7, 7, 0, 16], None), ([15, 16, 0, 1], None),
                       ([0, 8, 8, 16], (8, 8)), ([3, 9, 5, 13], (8, 8))):
        p = identity_params(spec, b, s, s, seed=4, mix="cutmix")
        p.mix_box = torch.tensor(box, dtype=torch.int32)
        assert torch.equal(fused_augment(images, idx, p, spec, block=block), spec_out(images, idx, p, spec)), box


def test_small_tiles_resampled():
    """Many programs per image (8 x 16 tiles on a 20 x 20 output, edge tiles partly outside) give the same
    result as one program per image."""
    images = u8(5, 3, 21, 19, seed=40)
    spec = spec_(20, patch_shuffle=2, mix="cutmix", mix_prob=1.0)
    p = aug.sample_params(spec, 2, 21, 19, gen(41))
    p.mix_box = torch.tensor([5, 19, 3, 16], dtype=torch.int32)
    idx = idx_for(5, 2, 42)
    out = fused_augment(images, idx, p, spec, block=(8, 16))
    assert torch.equal(out, fused_augment(images, idx, p, spec))
    torch.testing.assert_close(out, spec_out(images, idx, p, spec), atol=ATOL, rtol=0)


@pytest.mark.parametrize("hw,factor", [((33, 31), 2), ((33, 31), 3), ((7, 12), 3), ((5, 5), 1)])
def test_patch_shuffle_u8_exact(hw, factor):
    n, b = 7, 4
    images = u8(n, 3, *hw, seed=5)
    g = gen(6)
    rp = torch.argsort(torch.rand(b, factor, generator=g), dim=1)
    cp = torch.argsort(torch.rand(b, factor, generator=g), dim=1)
    idx = idx_for(n, b, 7)
    out = patch_shuffle_u8(images, rp, cp, idx)
    assert out.dtype == torch.uint8 and out.shape == (b, 3, hw[0] // factor * factor, hw[1] // factor * factor)
    assert torch.equal(out, aug.patch_shuffle(images[idx], rp, cp))
    assert torch.equal(patch_shuffle_u8(images[:b], rp, cp), aug.patch_shuffle(images[:b], rp, cp))


@pytest.mark.parametrize("c,dtype", [(3, torch.float32), (1, torch.bfloat16), (3, torch.float16)])
def test_normalize_u8_exact(c, dtype):
    mean, std = (MEAN3, STD3) if c == 3 else (MEAN1, STD1)
    images = u8(7, c, 33, 31, seed=8)
    images[0, 0, 0, :4] = torch.tensor([0, 1, 254, 255], dtype=torch.uint8)
    ref = pixels.eval_transform(images, mean, std, dtype)
    assert torch.equal(normalize_u8(images, mean, std, dtype), ref)
    idx = torch.tensor([6, 0, 6])
    assert torch.equal(normalize_u8(images, mean, std, dtype, idx=idx), ref[idx])
    cl = normalize_u8(images, mean, std, dtype, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, ref)


# ---------------------------------------------------------------------------------------------------
# Resampling (atol 1e-4): both filters, up- and downscaling, padding, odd shapes, C = 1, batch of 1
# ---------------------------------------------------------------------------------------------------
CASES = [  # (N, C, H, W), batch, spec kwargs
    ((7, 3, 33, 31), 5, dict(size=24, crop="rrc", patch_shuffle=2, antialias=True, mix="cutmix")),
    ((7, 3, 33, 31), 5, dict(size=24, crop="rrc", patch_shuffle=3, antialias=False, mix="mixup")),
    ((7, 3, 33, 31), 4, dict(size=12, crop="none", patch_shuffle=3, antialias=True)),  # downscale ~2.6x
    ((7, 3, 33, 31), 4, dict(size=12, crop="none", patch_shuffle=2, antialias=False, mix="cutmix")),
    ((7, 3, 33, 31), 4, dict(size=45, crop="rrc", antialias=True, mix="mixup")),  # upscale
    ((6, 3, 20, 20), 6, dict(size=16, crop="random_crop", crop_padding=4, antialias=True, patch_shuffle=2)),
    ((6, 1, 20, 18), 5, dict(size=16, crop="random_crop", crop_padding=3, antialias=False, mix="cutmix")),
    ((3, 1, 17, 29), 1, dict(size=9, crop="rrc", patch_shuffle=2, antialias=True, mix="mixup")),
]


@pytest.mark.parametrize("shape,b,kw", CASES)
def test_resampled_pipeline_matches_spec(shape, b, kw):
    n, c, h, w = shape
    spec = spec_(c=c, mix_prob=1.0, **kw)
    images = u8(*shape, seed=h + w)
    p = aug.sample_params(spec, b, h, w, gen(b + h))
    idx = idx_for(n, b, h)
    ref = spec_out(images, idx, p, spec)
    out = fused_augment(images, idx, p, spec)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    if kw["crop"] == "random_crop":
        assert bool((p.boxes[:, :2] < 0).any()), "want some negative offsets (zero padding) in this draw"


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("size", [11, 30])
def test_boxes_outside_the_image_read_zero(antialias, size):
    """Hand-made boxes sticking out on every side, down- and upscaled. Lengths stay within the spec's
    contract (aug.resample_weights: length <= max(axis, out size))."""
    images = u8(3, 3, 20, 24, seed=9)
    boxes = [[-5, -3, 20, 24], [12, 18, 15, 9], [-2, 20, 6, 7]]
    if size == 30:
        boxes[0] = [-6, -4, 30, 30]
    spec = spec_(size, antialias=antialias)
    p = AugParams(boxes=torch.tensor(boxes, dtype=torch.int32), flip=torch.tensor([True, False, True]),
                  row_perm=None, col_perm=None, partner=torch.tensor([2, 0, 1]),
                  mix_box=torch.zeros(4, dtype=torch.int32), lam=torch.tensor(1.0), mix="none")
    idx = torch.tensor([1, 2, 0])
    torch.testing.assert_close(fused_augment(images, idx, p, spec), spec_out(images, idx, p, spec),
                               atol=ATOL, rtol=0)


def test_long_boxes_use_the_full_filter():
    """Boxes longer than max(axis, out) are outside aug.resample_weights' contract (its static tap count
    then cuts the filter); the kernel keeps the whole filter, i.e. equals torchvision's resized_crop."""
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF
    images = u8(2, 3, 20, 24, seed=9)
    box = (-5, -3, 31, 33)
    p = AugParams(boxes=torch.tensor([box], dtype=torch.int32), flip=torch.tensor([False]), row_perm=None,
                  col_perm=None, partner=torch.tensor([0]), mix_box=torch.zeros(4, dtype=torch.int32),
                  lam=torch.tensor(1.0), mix="none")
    spec = AugSpec(size=11, mean=(0.0,) * 3, std=(1 / 255,) * 3)
    out = fused_augment(images, torch.tensor([1]), p, spec)
    ref = TF.resized_crop(images[1].float(), *box, [11, 11], interpolation=T.InterpolationMode.BILINEAR,
                          antialias=True)
    torch.testing.assert_close(out[0], ref, atol=1e-3, rtol=0)  # 0..255 scale here


def test_crop_resize_flip_normalize_ignores_mix():
    images = u8(5, 3, 21, 21, seed=10)
    spec = spec_(14, patch_shuffle=2, mix="mixup", mix_prob=1.0)
    p = aug.sample_params(spec, 4, 21, 21, gen(11))
    idx = idx_for(5, 4, 12)
    out = crop_resize_flip_normalize(images, idx, p, spec)
    p.mix = "none"
    torch.testing.assert_close(out, spec_out(images, idx, p, spec), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------
# dtypes, layout, output and input guards
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_outputs(dtype):
    images = u8(7, 3, 33, 31, seed=13)
    spec = spec_(20, patch_shuffle=2, mix="cutmix", mix_prob=1.0)
    p = aug.sample_params(spec, 5, 33, 31, gen(14))
    idx = idx_for(7, 5, 15)
    f32 = fused_augment(images, idx, p, spec)
    half = fused_augment(images, idx, p, spec, dtype=dtype)
    assert half.dtype == dtype and torch.equal(half, f32.to(dtype))  # kernel's rounding == torch's RNE
    ref = spec_out(images, idx, p, spec, dtype=dtype)
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    torch.testing.assert_close(half.float(), ref.float(), atol=ATOL, rtol=ulp)
    # identity boxes: exact against the spec's cast
    sq = u8(4, 3, 18, 18, seed=16)
    spec = spec_(18, patch_shuffle=3, mix="mixup")
    p = identity_params(spec, 4, 18, 18, seed=17, mix="mixup")
    idx = torch.tensor([2, 2, 0, 3])
    assert torch.equal(fused_augment(sq, idx, p, spec, dtype=dtype), spec_out(sq, idx, p, spec, dtype=dtype))


def test_bf16_rounding_ties_and_nan():
    """Round-to-nearest-even on exact ties (both directions), a carry into the exponent, overflow to inf,
    and NaN. A zero image with std 1 writes exactly -mean, so each value below reaches the cast as is."""
    vals = [1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -(1.0 + 2 ** -8), 2.0 - 2 ** -9, 1.0 + 2 ** -9,
            float(torch.finfo(torch.float32).max), 0.1]
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.uint8)
    for v in vals:
        out = normalize_u8(zero, (-v,), (1.0,), torch.bfloat16)
        ref = pixels.eval_transform(zero, (-v,), (1.0,), torch.bfloat16)
        assert torch.equal(out, ref), (v, out, ref)
    spec = spec_(8, crop="none")
    p = identity_params(spec, 2, 8, 8, seed=0)
    out = fused_augment(u8(2, 3, 8, 8), torch.tensor([0, 5]), p, spec, dtype=torch.bfloat16)
    assert out[1].isnan().all() and not out[0].isnan().any()


def test_channels_last_output():
    images = u8(7, 3, 33, 31, seed=18)
    spec = spec_(16, patch_shuffle=2, mix="cutmix", mix_prob=1.0)
    p = aug.sample_params(spec, 3, 33, 31, gen(19))
    idx = idx_for(7, 3, 20)
    nchw = fused_augment(images, idx, p, spec, dtype=torch.bfloat16)
    cl = fused_augment(images, idx, p, spec, dtype=torch.bfloat16, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert torch.equal(cl, nchw)
    ref = spec_out(images, idx, p, spec, dtype=torch.bfloat16, channels_last=True)
    assert ref.stride() == cl.stride()


@pytest.mark.parametrize("dtype,sentinel", [(torch.float32, float("nan")), (torch.bfloat16, 12345.0)])
def test_output_written_only_inside_the_view(dtype, sentinel):
    images = u8(7, 3, 13, 11, seed=21)
    spec = spec_(10, patch_shuffle=3, mix="mixup", mix_prob=1.0, antialias=False)
    b = 4
    p = aug.sample_params(spec, b, 13, 11, gen(22))
    idx = idx_for(7, b, 23)
    big = torch.full((b + 2, 5, 10 + 3, 10 + 5), sentinel, dtype=dtype)
    view = big[1:b + 1, 1:4, 2:12, 3:13]  # strided, offset: every dimension has neighbours on both sides
    ret = fused_augment(images, idx, p, spec, dtype=dtype, out=view)
    assert ret.data_ptr() == view.data_ptr()
    torch.testing.assert_close(view.float(), spec_out(images, idx, p, spec, dtype=dtype).float(), atol=ATOL,
                               rtol=2.0 ** -7)
    outside = torch.ones(big.shape, dtype=torch.bool)
    outside[1:b + 1, 1:4, 2:12, 3:13] = False
    rest = big[outside].float()
    sentinel = torch.tensor(sentinel, dtype=dtype).item()  # as stored (12345 is 12352 in bfloat16)
    assert rest.numel() > 0 and (rest.isnan().all() if sentinel != sentinel else (rest == sentinel).all())
    # a channels_last view inside a bigger buffer
    big_cl = torch.full((b, 14, 12, 4), sentinel, dtype=dtype)  # N, H, W, C storage
    view_cl = big_cl[:, 2:12, 1:11, :3].permute(0, 3, 1, 2)
    fused_augment(images, idx, p, spec, dtype=dtype, out=view_cl)
    assert torch.equal(view_cl, view)
    keep = torch.ones(big_cl.shape, dtype=torch.bool)
    keep[:, 2:12, 1:11, :3] = False
    rest = big_cl[keep].float()
    assert rest.isnan().all() if sentinel != sentinel else (rest == sentinel).all()


def test_input_read_only_inside_the_set():
    """The set lives inside bigger uint8 buffers full of 0xA5 (a padded strided view, and a contiguous
    view at a storage offset): any out-of-bounds read would leak 0xA5 into the output."""
    n, c, h, w = 7, 3, 21, 19
    clean = u8(n, c, h, w, seed=24)
    padded = torch.full((n + 2, c + 2, h + 4, w + 6), 0xA5, dtype=torch.uint8)
    padded[1:n + 1, 1:c + 1, 2:h + 2, 3:w + 3] = clean
    strided = padded[1:n + 1, 1:c + 1, 2:h + 2, 3:w + 3]
    flat = torch.full((n * c * h * w + 2000,), 0xA5, dtype=torch.uint8)
    offset = flat[1000:1000 + n * c * h * w].view(n, c, h, w)
    offset.copy_(clean)
    idx = torch.tensor([0, 6, 3, 6])
    # boxes hanging over every edge, with PatchShuffle and CutMix: taps reach the last row/column
    spec = spec_(12, patch_shuffle=2, mix="cutmix", mix_prob=1.0, antialias=True)
    p = aug.sample_params(spec, 4, h, w, gen(25))
    p.boxes = torch.tensor([[-4, -4, 20, 18], [0, 0, 20, 18], [10, 9, 12, 12], [-1, 15, 5, 5]], dtype=torch.int32)
    ref = spec_out(clean, idx, p, spec)
    for images in (strided, offset):
        torch.testing.assert_close(fused_augment(images, idx, p, spec), ref, atol=ATOL, rtol=0)
    ref_u8 = aug.patch_shuffle(clean[idx], p.row_perm, p.col_perm)
    for images in (strided, offset):
        assert torch.equal(patch_shuffle_u8(images, p.row_perm, p.col_perm, idx), ref_u8)
        assert torch.equal(normalize_u8(images, MEAN3, STD3, idx=idx), pixels.eval_transform(clean[idx], MEAN3, STD3))


# ---------------------------------------------------------------------------------------------------
# Guards: tap window, indices, launcher errors, loader integration
# ---------------------------------------------------------------------------------------------------
def test_tap_window_too_small_poisons_with_nan():
    images = u8(2, 3, 30, 30, seed=26)
    spec = spec_(6, antialias=True)  # 30 -> 6: 5x downscale, support 5, needs ceil(2 * 5) = 10 taps
    p = aug.sample_params(spec, 2, 30, 30, gen(27))
    p.boxes = torch.tensor([[0, 0, 30, 30], [0, 0, 6, 6]], dtype=torch.int32)
    idx = torch.tensor([0, 1])
    assert max_taps(p.boxes, 6) == 10 and max_taps(p.boxes[1:], 6) == 2
    out = fused_augment(images, idx, p, spec, taps=3)
    assert out[0].isnan().any() and not out[1].isnan().any()
    torch.testing.assert_close(out[1], spec_out(images, idx, p, spec)[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(fused_augment(images, idx, p, spec), spec_out(images, idx, p, spec), atol=ATOL,
                               rtol=0)


def test_out_of_range_index_poisons_only_its_sample():
    images = u8(3, 3, 8, 8, seed=28)
    spec = spec_(8, crop="none")
    p = identity_params(spec, 3, 8, 8, seed=29)
    out = fused_augment(images, torch.tensor([0, 3, -1]), p, spec)
    assert out[1:].isnan().all() and torch.equal(out[0], spec_out(images, torch.tensor([0]), p, spec)[0])


def test_empty_batch():
    images = u8(3, 3, 8, 8)
    spec = spec_(8, crop="none")
    p = aug.sample_params(spec, 0, 8, 8, gen(0))
    assert fused_augment(images, torch.zeros(0, dtype=torch.int64), p, spec).shape == (0, 3, 8, 8)


def _params(b=2, **kw) -> AugParams:
    base = dict(boxes=torch.tensor([[0, 0, 8, 8]] * b, dtype=torch.int32), flip=torch.zeros(b, dtype=torch.bool),
                row_perm=None, col_perm=None, partner=torch.arange(b), mix_box=torch.zeros(4, dtype=torch.int32),
                lam=torch.tensor(1.0), mix="none")
    base.update(kw)
    return AugParams(**base)


@pytest.mark.parametrize("change,message", [
    (dict(images=torch.zeros(2, 3, 8, 8)), "uint8 N x C x H x W"),
    (dict(images=torch.zeros(2, 5, 8, 8, dtype=torch.uint8)), "1 to 4 channels"),
    (dict(idx=torch.tensor([0, 1], dtype=torch.int32)), "idx must be an int64"),
    (dict(params=_params(boxes=torch.zeros(2, 3, dtype=torch.int32))), "params.boxes must have shape"),
    (dict(params=_params(boxes=torch.zeros(2, 4, dtype=torch.int64))), "params.boxes must be torch.int32"),
    (dict(params=_params(flip=torch.zeros(2, dtype=torch.uint8))), "params.flip must be torch.bool"),
    (dict(params=_params(partner=torch.arange(3))), "params.partner must have shape"),
    (dict(params=_params(mix="mixed")), "params.mix must be one of"),
    (dict(params=_params(lam=torch.tensor(1.0, dtype=torch.float64))), "params.lam must be a float32"),
    (dict(params=_params(row_perm=torch.zeros(2, 2, dtype=torch.int64))), "both be tensors or both None"),
    (dict(params=_params(row_perm=torch.zeros(2, 9, dtype=torch.int64), col_perm=torch.zeros(2, 9, dtype=torch.int64))),
     "shuffle factor 9"),
    (dict(params=_params(boxes=torch.zeros(2, 4, dtype=torch.int32, device="meta"))), "is on meta"),
    (dict(spec=spec_(8, c=1)), "one value per channel"),
    (dict(dtype=torch.float64), "output dtype must be one of"),
    (dict(dtype=torch.uint8), "not uint8"),
    (dict(out=torch.empty(2, 3, 7, 8)), "out must be a torch.float32 tensor of shape (2, 3, 8, 8)"),
    (dict(block=100), "powers of two"),
    (dict(block=(8, 12)), "powers of two"),
    (dict(taps=1), "taps must be an int >= 2"),
    (dict(taps=18), "resize the set first"),
])
def test_launcher_errors(change, message):
    args = dict(images=torch.zeros(2, 3, 8, 8, dtype=torch.uint8), idx=torch.tensor([0, 1]), params=_params(),
                spec=spec_(8))
    kw = {k: change.pop(k) for k in ("dtype", "out", "block", "taps") if k in change}
    args.update(change)
    with pytest.raises(ValueError, match=None) as e:
        fused_augment(args["images"], args["idx"], args["params"], args["spec"], **kw)
    assert message in str(e.value)


def test_other_launcher_errors():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="needs row_perm and col_perm"):
        patch_shuffle_u8(images, None, None)
    with pytest.raises(ValueError, match="std must be non-zero"):
        normalize_u8(images, MEAN3, (0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="not uint8"):
        normalize_u8(images, MEAN3, STD3, torch.uint8)


@pytest.mark.skipif(not interpreted(), reason="the CPU path exists only under TRITON_INTERPRET=1")
def test_cpu_tensors_run_under_the_interpreter():
    assert normalize_u8(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), (0.0,), (1.0,)).abs().sum() == 0


def test_loader_triton_backend_matches_torch_backend():
    from rd3fast.engine.loader import ResidentLoader
    images = u8(11, 3, 12, 12, seed=30)
    spec = spec_(10, patch_shuffle=2, mix="cutmix", mix_prob=0.7, rrc_scale=(0.3, 1.0))
    mk = lambda backend: ResidentLoader(images, torch.arange(11), spec, 4, seed=3, backend=backend)  # noqa: E731
    tri, ref = mk("triton"), mk("torch")
    assert tri.backend == "triton"
    for a, r in zip(tri, ref):
        assert torch.equal(a.y, r.y) and a.params.mix == r.params.mix
        torch.testing.assert_close(a.x, r.x, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------
# GPU (pytest -m gpu; benchmarks/gpu_check.sh): the same comparisons at 224 px, batch 256
# ---------------------------------------------------------------------------------------------------
GPU_SIZE, GPU_BATCH, GPU_SET = 224, 256, 600


def _cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.fail("gpu-marked tests need a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False  # the spec's matmuls in true float32
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda")


@pytest.fixture(scope="module")
def gpu_set():
    return u8(GPU_SET, 3, GPU_SIZE, GPU_SIZE, seed=31, device=_cuda())


@pytest.mark.gpu
@pytest.mark.parametrize("factor,antialias,mix,dtype,cl", [
    (1, True, "cutmix", torch.float32, False),
    (2, True, "mixup", torch.bfloat16, True),
    (4, False, "cutmix", torch.float16, False),
    (1, False, "none", torch.float32, True),
])
def test_gpu_identity_exact(gpu_set, factor, antialias, mix, dtype, cl):
    dev, s = gpu_set.device, GPU_SIZE
    spec = spec_(s, patch_shuffle=factor, antialias=antialias, mix=mix)
    p = identity_params(spec, GPU_BATCH, s, s, seed=32 + factor, mix=mix).to(dev)
    idx = idx_for(len(gpu_set), GPU_BATCH, 33).to(dev)
    out = fused_augment(gpu_set, idx, p, spec, dtype=dtype, channels_last=cl)
    ref = spec_out(gpu_set, idx, p, spec, dtype=dtype, channels_last=cl)
    assert out.stride() == ref.stride()
    assert torch.equal(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("crop,factor,antialias,mix,sevenths", [
    ("rrc", 1, True, "cutmix", 7),
    ("rrc", 2, False, "mixup", 7),
    ("random_crop", 1, True, "cutmix", 7),
    ("rrc", 4, True, "none", 3),     # downscaling: 224 -> 96
    ("none", 1, True, "mixup", 2),   # 3.5x downscaling (224 -> 64): 7 taps per axis
])
def test_gpu_resampled_matches_spec(gpu_set, crop, factor, antialias, mix, sevenths):
    dev, size = gpu_set.device, GPU_SIZE * sevenths // 7
    spec = spec_(size, crop=crop, crop_padding=GPU_SIZE // 14, patch_shuffle=factor, antialias=antialias, mix=mix,
                 mix_prob=1.0)
    p = aug.sample_params(spec, GPU_BATCH, GPU_SIZE, GPU_SIZE, gen(34)).to(dev)
    idx = idx_for(len(gpu_set), GPU_BATCH, 35).to(dev)
    ref = spec_out(gpu_set, idx, p, spec)
    f32 = fused_augment(gpu_set, idx, p, spec)
    torch.testing.assert_close(f32, ref, atol=ATOL, rtol=0)
    bf = fused_augment(gpu_set, idx, p, spec, dtype=torch.bfloat16, channels_last=True)
    assert bf.is_contiguous(memory_format=torch.channels_last) and torch.equal(bf, f32.to(torch.bfloat16))
    torch.testing.assert_close(bf.float(), ref, atol=ATOL, rtol=2.0 ** -7)


@pytest.mark.gpu
def test_gpu_guards(gpu_set):
    dev, s, b = gpu_set.device, GPU_SIZE, GPU_BATCH
    n, c = min(40, len(gpu_set)), 3
    clean = gpu_set[:n]
    padded = torch.full((n + 2, c, s + 4, s + 6), 0xA5, dtype=torch.uint8, device=dev)
    padded[1:n + 1, :, 2:s + 2, 3:s + 3] = clean
    images = padded[1:n + 1, :, 2:s + 2, 3:s + 3]
    spec = spec_(s, crop="random_crop", crop_padding=s // 7, patch_shuffle=2, mix="cutmix", mix_prob=1.0)
    p = aug.sample_params(spec, b, s, s, gen(36)).to(dev)
    idx = idx_for(n, b, 37).to(dev)
    ref = spec_out(clean, idx, p, spec, dtype=torch.bfloat16)
    big = torch.full((b + 2, 3, s + 2, s + 6), 12345.0, dtype=torch.bfloat16, device=dev)
    view = big[1:b + 1, :, 1:s + 1, 3:s + 3]
    fused_augment(images, idx, p, spec, dtype=torch.bfloat16, out=view)
    torch.testing.assert_close(view.float(), ref.float(), atol=ATOL, rtol=2.0 ** -7)
    big[1:b + 1, :, 1:s + 1, 3:s + 3] = 12345.0
    assert bool((big == torch.tensor(12345.0, dtype=torch.bfloat16)).all())
    assert torch.equal(patch_shuffle_u8(images, p.row_perm, p.col_perm, idx),
                       aug.patch_shuffle(clean[idx], p.row_perm, p.col_perm))
    assert torch.equal(normalize_u8(images, MEAN3, STD3, torch.bfloat16, idx=idx),
                       pixels.eval_transform(clean[idx], MEAN3, STD3, torch.bfloat16))


@pytest.mark.gpu
def test_gpu_cuda_graph_replay(gpu_set):
    """Captured once, replayed with new draws copied into the static inputs: equal to eager calls."""
    dev, s, b = gpu_set.device, GPU_SIZE, GPU_BATCH
    spec = spec_(s, patch_shuffle=2, mix="cutmix", mix_prob=1.0)
    g = gen(38)
    draw = lambda: (torch.randint(0, len(gpu_set), (b,), generator=g).to(dev),  # noqa: E731
                    aug.sample_params(spec, b, s, s, g).to(dev))
    idx, p = draw()
    fused_augment(gpu_set, idx, p, spec, dtype=torch.bfloat16)  # compile + tables before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fused_augment(gpu_set, idx, p, spec, dtype=torch.bfloat16)
    for _ in range(2):
        new_idx, new_p = draw()
        idx.copy_(new_idx)
        for name in ("boxes", "flip", "row_perm", "col_perm", "partner", "mix_box", "lam"):
            getattr(p, name).copy_(getattr(new_p, name))
        graph.replay()
        assert torch.equal(static_out, fused_augment(gpu_set, new_idx, new_p, spec, dtype=torch.bfloat16))


@pytest.mark.gpu
def test_gpu_loader_uses_the_kernels(gpu_set):
    from rd3fast.engine.loader import ResidentLoader
    n = min(512, len(gpu_set))
    spec = spec_(GPU_SIZE, patch_shuffle=2, mix="cutmix", mix_prob=1.0)
    mk = lambda backend: ResidentLoader(gpu_set[:n], torch.arange(n), spec, GPU_BATCH, seed=1,  # noqa: E731
                                        device=gpu_set.device, backend=backend, dtype=torch.bfloat16,
                                        channels_last=True)
    tri, ref = mk("auto"), mk("torch")
    assert tri.backend == "triton" and ref.backend == "torch"
    for a, r in zip(tri, ref):
        assert a.x.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(a.x.float(), r.x.float(), atol=ATOL, rtol=2.0 ** -7)


# ---------------------------------------------------------------------------------------------------
# Compiled for the GPU, without one. The interpreter runs the kernel as numpy and never type-checks it the
# way the compiler does; here each launcher's real call (recorded under the interpreter) is compiled by
# Triton's own backend to a Hopper cubin (sm_90, the H100/H200 the benchmarks target) with its bundled ptxas,
# in a subprocess where TRITON_INTERPRET is unset.
# ---------------------------------------------------------------------------------------------------
_PTR = {torch.uint8: "*u8", torch.int16: "*i16", torch.int32: "*i32", torch.int64: "*i64",
        torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def _recorded_call(monkeypatch, launcher, *args, **kwargs) -> dict:
    """The kernel signature and constexprs of one launcher call, as the GPU launch would specialize it."""
    import inspect

    import rd3fast.kernels.augment as K

    names = list(inspect.signature(K._augment_kernel.fn).parameters)
    calls = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *a, **kw: calls.append((a, kw))

    # The launcher runs as it would on CUDA (GPU tiles, num_warps, bf16 stored as bf16): only its check that
    # the tensors are on a GPU is bypassed, and the kernel call is recorded instead of run.
    monkeypatch.setattr(K, "_augment_kernel", Recorder())
    monkeypatch.setattr(K, "interpreted", lambda: False)
    monkeypatch.setattr(K, "_check_images", lambda images: images.device)
    launcher(*args, **kwargs)
    [(a, kw)] = calls
    sig, const, aligned = {}, {}, []
    num_warps = kw.pop("num_warps")
    for name, value in zip(names, a):
        if isinstance(value, torch.Tensor):
            sig[name] = _PTR[value.dtype]
            aligned.append(name)  # fresh CUDA allocations are 256-byte aligned
        elif value == 1:
            sig[name], const[name] = "constexpr", 1  # Triton specializes integer 1 as a constant
        else:
            sig[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                aligned.append(name)
    for name, value in kw.items():
        sig[name], const[name] = "constexpr", value
    assert const["INTERP"] is False and const["BF16_BITS"] is False
    return {"signature": sig, "constexprs": const, "aligned": aligned, "num_warps": num_warps}


_COMPILE = r'''
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import importlib.util
import rd3fast
if importlib.util.find_spec("rd3fast.kernels") is None:  # not installed: ./kernels, as tests/conftest.py does
    rd3fast.__path__.append(sys.argv[1])
import rd3fast.kernels.augment as K
assert type(K._augment_kernel).__name__ == "JITFunction", "kernels imported under the interpreter"
names = list(K._augment_kernel.arg_names)
for call in json.load(sys.stdin):
    idx = {n: (names.index(n),) for n in names}
    src = ASTSource(fn=K._augment_kernel, signature=call["signature"],
                    constexprs={idx[n]: v for n, v in call["constexprs"].items()},
                    attrs={idx[n]: [["tt.divisibility", 16]] for n in call["aligned"]})
    cc = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": call["num_warps"]})
    print(call["name"], len(cc.asm["cubin"]), "bytes of sm_90 cubin", flush=True)
'''


@pytest.mark.skipif(not interpreted(), reason="records the launches under the interpreter; on a GPU the "
                                            "gpu-marked tests compile and run the kernels themselves")
def test_every_launcher_compiles_for_hopper(monkeypatch):
    import json
    import os
    import subprocess
    import sys

    images = u8(6, 3, 32, 32, seed=3)
    c1 = u8(6, 1, 30, 30, seed=4)
    idx = idx_for(6, 4, 0)
    rd3 = spec_(16, patch_shuffle=2, crop="rrc", rrc_scale=(0.5, 1.0), mix="cutmix")
    mixup = spec_(16, antialias=False, mix="mixup")
    cifar = spec_(30, c=1, crop="random_crop", crop_padding=4, mix="none")
    shuffled = aug.sample_params(rd3, 6, 32, 32, gen(4))
    cases = {
        "rd3 bf16 channels_last": (fused_augment, images, idx, aug.sample_params(rd3, 4, 32, 32, gen(1)), rd3,
                                   torch.bfloat16, True),
        "mixup fp32 bilinear": (fused_augment, images, idx, aug.sample_params(mixup, 4, 32, 32, gen(2)), mixup,
                                torch.float32),
        "random_crop fp16 1ch": (crop_resize_flip_normalize, c1, idx, aug.sample_params(cifar, 4, 30, 30, gen(3)),
                                 cifar, torch.float16),
        "patch_shuffle_u8": (patch_shuffle_u8, images, shuffled.row_perm, shuffled.col_perm),
        "normalize_u8 bf16": (normalize_u8, images, MEAN3, STD3, torch.bfloat16, idx),
    }
    calls = []
    for name, (launcher, *args) in cases.items():
        with monkeypatch.context() as m:
            calls.append({"name": name, **_recorded_call(m, launcher, *args)})
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", _COMPILE, root], input=json.dumps(calls), env=env, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = [line.split(" bytes")[0].rsplit(" ", 1) for line in done.stdout.splitlines()]
    assert [n for n, _ in compiled] == list(cases) and all(int(size) > 1000 for _, size in compiled)
