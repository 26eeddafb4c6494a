"""One Triton kernel for the whole augmentation path: resident uint8 set -> finished, normalized batch.

Must equal (``rd3fast/engine/aug.py``, the specification):
    fused_augment               == aug.augment(images[idx], params, spec, dtype, channels_last)
    crop_resize_flip_normalize  == the same with no CutMix / Mixup (params.mix taken as "none")
    patch_shuffle_u8            == aug.patch_shuffle(images[idx], row_perm, col_perm)      (exact, uint8)
    normalize_u8                == pixels.eval_transform(images[idx], mean, std, dtype)
Exact (bit for bit, CPU interpreter and GPU) for index-moving work: gather, PatchShuffle, flip, CutMix,
the Mixup blend, normalization of integer values, boxes whose scale is 1. Within float32 rounding where
bilinear weights are summed: the tests use atol 1e-4 on normalized float32 output (observed < 2e-6).
bfloat16 / float16 output is the float32 value rounded to nearest even, like torch's cast.

Per output pixel (b, c, oy, ox) the kernel walks the spec's pipeline backwards:
    CutMix:  inside params.mix_box the pixel is sample s = partner[b]'s, outside it is b's
             (Mixup computes both and blends lam * own + (1 - lam) * partner, after normalization)
    flip:    ox -> S - 1 - ox when flip[s]
    box:     resample taps (aug.resample_weights: bilinear, or the antialiased triangle filter) inside the
             crop of sample s, in PatchShuffled coordinates; taps outside [0, H') x [0, W') read 0
    shuffle: shuffled u -> perm[u // t] * t + u % t with t = size // f  (aug.strip_index)
    source:  images[idx[s], c, row, col] (uint8) -> (v / 255 - mean[c]) / std[c] -> cast -> store.

Layout: one program = one sample x a BY x BX tile of output pixels, all channels. The row filter state is
computed per tile row and the column state per tile column (2-D broadcasting); taps and channels are
unrolled, and every tensor keeps a pixel's taps in the same thread (no cross-lane reductions). Gather loads
are unmasked because every address is clamped into the image (and perm entries into [0, f)). For CutMix
(one box per batch) a tile wholly inside or outside the box walks one sample only. Normalization of an
integer value reads a 256-entry table made by pixels.normalize itself (bit-exact); other values use one FMA.
The Mixup products are explicit ``mul.rn`` on the GPU so that no FMA contraction changes their rounding.
Kernels draw no random numbers, do no host sync, and are CUDA-graph capturable after one eager call.

Antialias tap count. With support s = max(box / out, 1) the filter window of one output pixel spans at most
ceil(2 s) source positions (the spec's 2 * ceil(s) + 1 includes positions whose weight is 0). The kernel takes
the tap count as a constexpr (``TAPS``) so that its loops unroll; the launcher picks it with no device sync:
the ``taps`` argument if given; else exactly from ``params.boxes`` when that tensor is on the CPU; else the
largest box ``aug.sample_params`` can draw for ``spec`` and this image size (rrc/none: the shuffled image;
random_crop: spec.size). A sample whose box needs more taps than that (hand-made params) is written as NaN,
never silently wrong; so is a sample whose ``idx`` (or mixing partner) is out of range.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

from rd3fast.data import pixels
from rd3fast.engine.aug import AugParams, AugSpec

_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.uint8)
_MIX = {"none": 0, "cutmix": 1, "mixup": 2}
_NEAREST, _BILINEAR, _ANTIALIAS = 0, 1, 2
MAX_TAPS = 16  # antialias taps per axis (downscaling up to 8x); the tap loops are unrolled


# ---------------------------------------------------------------------------------------------------
# The kernel
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _axis_setup(o, length, out_size, RESAMPLE: tl.constexpr, TAPS: tl.constexpr):
    """Filter state of one axis at output positions ``o``, relative to the crop (aug.resample_weights):
    antialias (xmin, xmax, center, invscale, 1 / weight sum, fits); bilinear (i0, i1, frac, -, -, True);
    identity (o, o, -, -, -, True). ``fits``: the filter needs at most TAPS taps (per sample)."""
    if RESAMPLE == 0:
        return o, o, 0.0, 0.0, 1.0, length >= 0
    elif RESAMPLE == 1:  # bilinear, align_corners=False
        scale = tl.math.div_rn(length.to(tl.float32), out_size.to(tl.float32))
        src = tl.maximum((o.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
        i0 = tl.minimum(src.to(tl.int32), length - 1)  # src >= 0: truncation == floor
        frac = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
        i1 = i0 + (i0 < length - 1).to(tl.int32)
        return i0, i1, frac, 0.0, 1.0, length >= 0
    else:  # antialiased (_upsample_bilinear2d_aa): triangle filter, support scaled, weights renormalized
        scale = tl.math.div_rn(length.to(tl.float32), out_size.to(tl.float32))
        down = scale >= 1.0
        support = tl.where(down, scale, 1.0)
        invscale = tl.where(down, tl.math.div_rn(1.0, scale), 1.0)
        center = scale * (o.to(tl.float32) + 0.5)
        xmin = tl.maximum((center - support + 0.5).to(tl.int32), 0)  # args >= -0.5: trunc, like C's int()
        xmax = tl.minimum((center + support + 0.5).to(tl.int32), length)
        wsum = tl.zeros(o.shape, tl.float32)
        for j in tl.static_range(TAPS):  # the same weights as _axis_tap's (compiled: computed once)
            dist = ((xmin + j).to(tl.float32) - center + 0.5) * invscale
            wsum += tl.where(xmin + j < xmax, tl.maximum(1.0 - tl.abs(dist), 0.0), 0.0)
        # wsum > 0 for every output position inside the image (0 only past the edge of the last tile)
        rnorm = 1.0 / tl.where(wsum > 0.0, wsum, 1.0)  # (approximate division; exact for wsum == 1)
        return xmin, xmax, center, invscale, rnorm, 2.0 * support <= TAPS


@triton.jit
def _axis_tap(j: tl.constexpr, a0, a1, f0, f1, rnorm, start, in_size, perm_ptr, f, t, stride,
              RESAMPLE: tl.constexpr, SHUFFLE: tl.constexpr):
    """Element offset and weight of tap j: crop position -> shuffled position (weight 0 outside the shuffled
    image, position clamped into it) -> PatchShuffle strip permutation -> source offset."""
    if RESAMPLE == 0:
        pos = a0
        w = 1.0
    elif RESAMPLE == 1:
        if j == 0:
            pos = a0
            w = 1.0 - f0
        else:
            pos = a1
            w = f0
    else:
        pos = a0 + j  # triangle filter: (pos - center + 0.5) * invscale, 0 at or past xmax
        dist = (pos.to(tl.float32) - f0 + 0.5) * f1
        w = tl.where(pos < a1, tl.maximum(1.0 - tl.abs(dist), 0.0), 0.0) * rnorm
    u = pos + start  # position in the (shuffled) image axis
    inside = (u >= 0) & (u < in_size)
    u = tl.where(inside, u, 0)
    if SHUFFLE:
        strip = u // t
        perm = tl.minimum(tl.maximum(tl.load(perm_ptr + strip).to(tl.int32), 0), f - 1)  # never read outside
        src = perm * t + (u - strip * t)
    else:
        src = u
    return src * stride, tl.where(inside, w, 0.0)


@triton.jit
def _sample(s, oy, ox, s_n, n_img, idx_ptr, box_ptr, flip_ptr, rperm_ptr, cperm_ptr, n_perm, ih, iw,
            oh, ow, HAS_IDX: tl.constexpr, RESAMPLE: tl.constexpr, FLIP: tl.constexpr, TAPS: tl.constexpr,
            IDX64: tl.constexpr):
    """Everything about batch slot ``s`` (a scalar): its image's element offset, crop start, row state at the
    tile's rows ``oy`` (BY, 1), column state at its (flipped) columns ``ox`` (1, BX), perm rows, validity."""
    if HAS_IDX:
        n = tl.load(idx_ptr + s)
        valid = (n >= 0) & (n < n_img)
        n = tl.where(valid, n, 0)
    else:
        n = s
        valid = s >= 0
    if IDX64:
        base = n.to(tl.int64) * s_n
    else:  # the whole set spans < 2**31 elements: 32-bit offsets
        base = n.to(tl.int32) * s_n
    if RESAMPLE == 0:
        top = 0
        left = 0
        bh = ih
        bw = iw
    else:
        top = tl.load(box_ptr + s * 4)
        left = tl.load(box_ptr + s * 4 + 1)
        bh = tl.load(box_ptr + s * 4 + 2)
        bw = tl.load(box_ptr + s * 4 + 3)
    if FLIP:
        ox = tl.where(tl.load(flip_ptr + s) != 0, ow - 1 - ox, ox)
    y0, y1, yf0, yf1, yrn, oky = _axis_setup(oy, bh, oh, RESAMPLE, TAPS)
    x0, x1, xf0, xf1, xrn, okx = _axis_setup(ox, bw, ow, RESAMPLE, TAPS)
    # validity as int32 0/1: the interpreter mishandles int1 scalars broadcast against blocks
    return (base, top, left, rperm_ptr + s * n_perm, cperm_ptr + s * n_perm, y0, y1, yf0, yf1, yrn,
            x0, x1, xf0, xf1, xrn, (oky & okx & valid).to(tl.int32))


@triton.jit
def _accumulate(img_ptr, base, top, left, rp, cp, y0, y1, yf0, yf1, yrn, x0, x1, xf0, xf1, xrn,
                pbase, ptop, pleft, prp, pcp, py0, py1, pyf0, pyf1, pyrn, px0, px1, pxf0, pxf1, pxrn,
                pick_partner, s_h, s_w, ih, iw, n_perm, th, tw, S_C: tl.constexpr,
                C: tl.constexpr, RESAMPLE: tl.constexpr, SHUFFLE: tl.constexpr, TAPS: tl.constexpr,
                SELECT: tl.constexpr):
    """Resampled 0..255 values (BY, BX) of up to 4 channels: sum over TAPS x TAPS taps of wy * wx * pixel.
    With SELECT (CutMix), pixels where ``pick_partner`` holds take the second sample's taps."""
    acc0 = tl.zeros(pick_partner.shape, tl.float32)
    acc1 = tl.zeros(pick_partner.shape, tl.float32)
    acc2 = tl.zeros(pick_partner.shape, tl.float32)
    acc3 = tl.zeros(pick_partner.shape, tl.float32)
    for ty in tl.static_range(TAPS):
        yoff, wy = _axis_tap(ty, y0, y1, yf0, yf1, yrn, top, ih, rp, n_perm, th, s_h, RESAMPLE, SHUFFLE)
        if SELECT:
            pyoff, pwy = _axis_tap(ty, py0, py1, pyf0, pyf1, pyrn, ptop, ih, prp, n_perm, th, s_h, RESAMPLE,
                                   SHUFFLE)
        for tx in tl.static_range(TAPS):
            xoff, wx = _axis_tap(tx, x0, x1, xf0, xf1, xrn, left, iw, cp, n_perm, tw, s_w, RESAMPLE, SHUFFLE)
            off = base + (yoff + xoff)
            w = wy * wx
            if SELECT:
                pxoff, pwx = _axis_tap(tx, px0, px1, pxf0, pxf1, pxrn, pleft, iw, pcp, n_perm, tw, s_w, RESAMPLE,
                                       SHUFFLE)
                off = tl.where(pick_partner, pbase + (pyoff + pxoff), off)
                w = tl.where(pick_partner, pwy * pwx, w)
            ptr = img_ptr + off  # channels at constant distances (S_C is a constexpr: load immediates)
            acc0 += w * tl.load(ptr).to(tl.float32)
            if C > 1:
                acc1 += w * tl.load(ptr + S_C).to(tl.float32)
            if C > 2:
                acc2 += w * tl.load(ptr + 2 * S_C).to(tl.float32)
            if C > 3:
                acc3 += w * tl.load(ptr + 3 * S_C).to(tl.float32)
    return acc0, acc1, acc2, acc3


@triton.jit
def _walk(s, sp, pick, oy, ox, img_ptr, s_n, s_h, s_w, n_img, idx_ptr, box_ptr, flip_ptr, rperm_ptr, cperm_ptr,
          n_perm, ih, iw, oh, ow, th, tw, S_C: tl.constexpr, C: tl.constexpr, HAS_IDX: tl.constexpr,
          RESAMPLE: tl.constexpr, SHUFFLE: tl.constexpr, FLIP: tl.constexpr, TAPS: tl.constexpr,
          IDX64: tl.constexpr, SELECT: tl.constexpr):
    """Resampled values of slot ``s`` at the tile (with SELECT: of slot ``sp`` where ``pick``) and an int32
    0/1 validity flag (scalar, or per pixel with SELECT)."""
    (base, top, left, rp, cp, y0, y1, yf0, yf1, yrn, x0, x1, xf0, xf1, xrn, ok) = _sample(
        s, oy, ox, s_n, n_img, idx_ptr, box_ptr, flip_ptr, rperm_ptr, cperm_ptr, n_perm, ih, iw, oh, ow,
        HAS_IDX, RESAMPLE, FLIP, TAPS, IDX64)
    if SELECT:
        (pbase, ptop, pleft, prp, pcp, py0, py1, pyf0, pyf1, pyrn, px0, px1, pxf0, pxf1, pxrn, pok) = _sample(
            sp, oy, ox, s_n, n_img, idx_ptr, box_ptr, flip_ptr, rperm_ptr, cperm_ptr, n_perm, ih, iw, oh, ow,
            HAS_IDX, RESAMPLE, FLIP, TAPS, IDX64)
        a0, a1, a2, a3 = _accumulate(
            img_ptr, base, top, left, rp, cp, y0, y1, yf0, yf1, yrn, x0, x1, xf0, xf1, xrn,
            pbase, ptop, pleft, prp, pcp, py0, py1, pyf0, pyf1, pyrn, px0, px1, pxf0, pxf1, pxrn,
            pick, s_h, s_w, ih, iw, n_perm, th, tw, S_C, C, RESAMPLE, SHUFFLE, TAPS, True)
        ok = tl.where(pick, pok, ok)
    else:
        a0, a1, a2, a3 = _accumulate(
            img_ptr, base, top, left, rp, cp, y0, y1, yf0, yf1, yrn, x0, x1, xf0, xf1, xrn,
            base, top, left, rp, cp, y0, y1, yf0, yf1, yrn, x0, x1, xf0, xf1, xrn,
            pick, s_h, s_w, ih, iw, n_perm, th, tw, S_C, C, RESAMPLE, SHUFFLE, TAPS, False)
    return a0, a1, a2, a3, ok


@triton.jit
def _normalize(v, c: tl.constexpr, lut_ptr, aff_ptr, C: tl.constexpr):
    """pixels.normalize: (v / 255 - mean) / std. Integer v (every pixel of an identity-scale box, eval batches)
    reads a 256-entry table made by pixels.normalize itself, so it is bit-exact; other v use one FMA with
    1 / (255 std) and -mean / std (within ~1e-6 of the spec's two divisions)."""
    vi = v.to(tl.int32)
    exact = tl.load(lut_ptr + c * 256 + tl.minimum(tl.maximum(vi, 0), 255))
    fast = v * tl.load(aff_ptr + c) + tl.load(aff_ptr + C + c)
    return tl.where(vi.to(tl.float32) == v, exact, fast)


@triton.jit
def _finish(v, vp, lam, c: tl.constexpr, lut_ptr, aff_ptr, C: tl.constexpr, NORMALIZE: tl.constexpr,
            MIX: tl.constexpr, INTERP: tl.constexpr):
    """Normalization, then aug.mix's Mixup blend lam * own + (1 - lam) * partner (the spec's op order)."""
    if NORMALIZE:
        v = _normalize(v, c, lut_ptr, aff_ptr, C)
        if MIX == 2:
            vp = _normalize(vp, c, lut_ptr, aff_ptr, C)
    if MIX == 2:
        if INTERP:
            v = lam * v + (1.0 - lam) * vp
        else:  # products as explicit mul.rn: never contracted into an FMA, so rounding matches torch's
            own = tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [v * 0.0 + lam, v],
                                            dtype=tl.float32, is_pure=True, pack=1)
            other = tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [vp * 0.0 + (1.0 - lam), vp],
                                              dtype=tl.float32, is_pure=True, pack=1)
            v = own + other
    return v


@triton.jit
def _store(ptr, v, mask, BF16_BITS: tl.constexpr):
    if BF16_BITS:  # interpreter only: float32 -> bfloat16 round-to-nearest-even by hand (its cast truncates;
        # compiled, .to(tl.bfloat16) is cvt.rn, the same rounding as torch)
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        bits = tl.where(v != v, 0x7FC0, bits)
        tl.store(ptr, bits.to(tl.uint16).to(tl.int16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, v.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _augment_kernel(
        img_ptr, s_n, s_h, s_w, n_img,
        idx_ptr, box_ptr, flip_ptr, rperm_ptr, cperm_ptr, n_perm,
        partner_ptr, mbox_ptr, lam_ptr, lut_ptr, aff_ptr,
        out_ptr, o_b, o_c, o_h, o_w,
        ih, iw, oh, ow, th, tw, n_batch,
        C: tl.constexpr, HAS_IDX: tl.constexpr, RESAMPLE: tl.constexpr, SHUFFLE: tl.constexpr,
        FLIP: tl.constexpr, MIX: tl.constexpr, NORMALIZE: tl.constexpr, BF16_BITS: tl.constexpr,
        TAPS: tl.constexpr, IDX64: tl.constexpr, S_C: tl.constexpr, INTERP: tl.constexpr, BY: tl.constexpr,
        BX: tl.constexpr):
    """Program = (sample b, BY x BX output tile). MIX: 0 none, 1 CutMix, 2 Mixup. RESAMPLE: 0 identity
    (no box: output pixel = shuffled pixel), 1 bilinear, 2 antialiased bilinear."""
    pid = tl.program_id(0)
    tiles_x = tl.cdiv(ow, BX)
    tiles = tl.cdiv(oh, BY) * tiles_x
    b = pid // tiles
    tile = pid - b * tiles
    ty0 = tile // tiles_x
    oy = (ty0 * BY + tl.arange(0, BY))[:, None]  # (BY, 1)
    ox = ((tile - ty0 * tiles_x) * BX + tl.arange(0, BX))[None, :]  # (1, BX)
    pmask = (oy < oh) & (ox < ow)

    zero = tl.zeros((BY, BX), tl.int32)
    lam = 1.0
    if MIX != 0:  # a partner slot outside [0, B) is never read: its pixels become NaN
        part = tl.load(partner_ptr + b)
        part_ok = ((part >= 0) & (part < n_batch)).to(tl.int32)
        part = tl.where(part_ok != 0, part, b)
    if MIX == 1:  # CutMix: the partner's pixel inside the box (y1, y2, x1, x2), the sample's own outside
        box_y1 = tl.load(mbox_ptr)
        box_y2 = tl.load(mbox_ptr + 1)
        box_x1 = tl.load(mbox_ptr + 2)
        box_x2 = tl.load(mbox_ptr + 3)
        # One box per batch: most tiles lie wholly inside or outside it and walk one sample only (each
        # branch computes only the state it needs, which keeps registers down).
        row0 = ty0 * BY
        col0 = (tile - ty0 * tiles_x) * BX
        row1 = tl.minimum(row0 + BY, oh)
        col1 = tl.minimum(col0 + BX, ow)
        inside = (box_y1 <= row0) & (row1 <= box_y2) & (box_x1 <= col0) & (col1 <= box_x2)
        apart = ((box_y2 <= row0) | (row1 <= box_y1) | (box_x2 <= col0) | (col1 <= box_x1)
                 | (box_y2 <= box_y1) | (box_x2 <= box_x1))
        if inside:
            a0, a1, a2, a3, ok = _walk(
                part, part, pmask & False, oy, ox, img_ptr, s_n, s_h, s_w, n_img, idx_ptr, box_ptr, flip_ptr,
                rperm_ptr, cperm_ptr, n_perm, ih, iw, oh, ow, th, tw, S_C, C, HAS_IDX, RESAMPLE, SHUFFLE, FLIP, TAPS,
                IDX64, False)
            ok = zero + ok * part_ok
        elif apart:
            a0, a1, a2, a3, ok = _walk(
                b, b, pmask & False, oy, ox, img_ptr, s_n, s_h, s_w, n_img, idx_ptr, box_ptr, flip_ptr,
                rperm_ptr, cperm_ptr, n_perm, ih, iw, oh, ow, th, tw, S_C, C, HAS_IDX, RESAMPLE, SHUFFLE, FLIP, TAPS,
                IDX64, False)
            ok = zero + ok
        else:
            pick = (oy >= box_y1) & (oy < box_y2) & (ox >= box_x1) & (ox < box_x2)
            a0, a1, a2, a3, ok = _walk(
                b, part, pick, oy, ox, img_ptr, s_n, s_h, s_w, n_img, idx_ptr, box_ptr, flip_ptr,
                rperm_ptr, cperm_ptr, n_perm, ih, iw, oh, ow, th, tw, S_C, C, HAS_IDX, RESAMPLE, SHUFFLE, FLIP, TAPS,
                IDX64, True)
            ok = ok * tl.where(pick, part_ok, 1)
    else:
        a0, a1, a2, a3, ok = _walk(
            b, b, pmask & False, oy, ox, img_ptr, s_n, s_h, s_w, n_img, idx_ptr, box_ptr, flip_ptr,
            rperm_ptr, cperm_ptr, n_perm, ih, iw, oh, ow, th, tw, S_C, C, HAS_IDX, RESAMPLE, SHUFFLE, FLIP, TAPS,
            IDX64, False)
    p0 = a0
    p1 = a1
    p2 = a2
    p3 = a3
    if MIX == 2:  # Mixup: walk the partner too
        lam = tl.load(lam_ptr)
        p0, p1, p2, p3, pok = _walk(
            part, part, pmask & False, oy, ox, img_ptr, s_n, s_h, s_w, n_img, idx_ptr, box_ptr, flip_ptr,
            rperm_ptr, cperm_ptr, n_perm, ih, iw, oh, ow, th, tw, S_C, C, HAS_IDX, RESAMPLE, SHUFFLE, FLIP, TAPS,
            IDX64, False)
        ok = ok * pok * part_ok

    out = out_ptr + b.to(tl.int64) * o_b + oy * o_h + ox * o_w
    good = ok != 0
    nan = float("nan")
    v = _finish(a0, p0, lam, 0, lut_ptr, aff_ptr, C, NORMALIZE, MIX, INTERP)
    _store(out, tl.where(good, v, nan), pmask, BF16_BITS)
    if C > 1:
        v = _finish(a1, p1, lam, 1, lut_ptr, aff_ptr, C, NORMALIZE, MIX, INTERP)
        _store(out + o_c, tl.where(good, v, nan), pmask, BF16_BITS)
    if C > 2:
        v = _finish(a2, p2, lam, 2, lut_ptr, aff_ptr, C, NORMALIZE, MIX, INTERP)
        _store(out + 2 * o_c, tl.where(good, v, nan), pmask, BF16_BITS)
    if C > 3:
        v = _finish(a3, p3, lam, 3, lut_ptr, aff_ptr, C, NORMALIZE, MIX, INTERP)
        _store(out + 3 * o_c, tl.where(good, v, nan), pmask, BF16_BITS)


# ---------------------------------------------------------------------------------------------------
# Launch plumbing
# ---------------------------------------------------------------------------------------------------
def interpreted() -> bool:
    """True when the kernels were defined under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return type(_augment_kernel).__name__ == "InterpretedFunction"


def _check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the images are on {device}: move params with params.to(device)")


def _check(name: str, t, dtype: torch.dtype, shape: tuple, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    _check_device(name, t, device)


def _check_images(images) -> torch.device:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a uint8 N x C x H x W tensor, got {got}")
    if not 1 <= images.shape[1] <= 4:
        raise ValueError(f"images must have 1 to 4 channels, got {images.shape[1]}")
    dev = images.device
    if dev.type == "cpu" and not interpreted():
        raise ValueError("rd3fast.kernels got CPU tensors: the Triton kernels need CUDA tensors, or "
                         "TRITON_INTERPRET=1 set before rd3fast.kernels is first imported")
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"rd3fast.kernels runs on CUDA (or CPU under TRITON_INTERPRET=1), got device {dev}")
    if images.numel() and images[0].numel() >= 2**31:
        raise ValueError("one image has >= 2**31 elements; offsets inside an image are int32")
    return dev


def _check_idx(idx, n_img: int, dev: torch.device) -> int:
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or idx.dim() != 1:
        got = f"{idx.dtype} {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be an int64 (B,) tensor of indices into the image set, got {got}")
    _check_device("idx", idx, dev)
    return idx.shape[0]


def _check_perms(row_perm, col_perm, b: int, h: int, w: int, dev: torch.device) -> int:
    """The shuffle factor f (1 when there is no PatchShuffle)."""
    if (row_perm is None) != (col_perm is None):
        raise ValueError("row_perm and col_perm must both be tensors or both None")
    if row_perm is None:
        return 1
    if row_perm.dim() != 2 or row_perm.shape[0] != b:
        raise ValueError(f"row_perm must be int64 (B={b}, f), got {tuple(row_perm.shape)}")
    f = row_perm.shape[1]
    _check("row_perm", row_perm, torch.int64, (b, f), dev)
    _check("col_perm", col_perm, torch.int64, (b, f), dev)
    if f < 1 or f > min(h, w):
        raise ValueError(f"shuffle factor {f} must be between 1 and the image side min({h}, {w})")
    return f


def _out_tensor(out, shape: tuple, dtype: torch.dtype, dev: torch.device, channels_last: bool) -> torch.Tensor:
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"output dtype must be one of float32, bfloat16, float16 (uint8 for patch_shuffle_u8), "
                         f"got {dtype}")
    if out is None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return torch.empty(shape, dtype=dtype, device=dev, memory_format=fmt)
    if not isinstance(out, torch.Tensor) or out.dtype != dtype or tuple(out.shape) != shape:
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"out must be a {dtype} tensor of shape {shape}, got {got}")
    _check_device("out", out, dev)
    return out


_CONSTS: dict = {}


def _norm_tables(mean, std, c: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalization constants on the device, made once per (mean, std, device) so that a step does no
    host-to-device copy: a (C, 256) table of pixels.normalize(0..255) computed by the spec itself on ``dev``,
    and (2, C) float32 rows 1 / (255 std), -mean / std for non-integer (resampled) values."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean and std need one value per channel ({c}), got {len(mean)} and {len(std)}")
    if any(s == 0 for s in std):
        raise ValueError(f"std must be non-zero, got {std}")
    key = (mean, std, str(dev))
    if key not in _CONSTS:
        if dev.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("rd3fast.kernels: call the kernel once before CUDA-graph capture (it builds its "
                               "normalization tables and compiles on first use)")
        levels = torch.arange(256, dtype=torch.float32, device=dev).view(1, 1, 256, 1).expand(1, c, 256, 1)
        lut = pixels.normalize(levels, mean, std).reshape(c, 256).contiguous()
        aff = torch.tensor([[1.0 / (255.0 * s) for s in std], [-m / s for m, s in zip(mean, std)]],
                           dtype=torch.float32).to(dev)
        _CONSTS[key] = (lut, aff)
    return _CONSTS[key]


def _taps_for(longest: float, size: int) -> int:
    """Taps per axis of the antialias filter for a box ``longest`` pixels long: ceil(2 * support), with the
    support computed in float32 exactly as the kernel (and aug.resample_weights) compute it."""
    support = max(float(np.float32(longest) / np.float32(size)), 1.0)
    return int(math.ceil(2.0 * support))


def max_taps(boxes: torch.Tensor, size: int) -> int:
    """Antialias taps per axis that these boxes (a host tensor, int32 (B, 4)) need at output ``size``."""
    return _taps_for(int(boxes[:, 2:4].max()) if boxes.numel() else 1, size)


def _taps_constexpr(params: AugParams, spec: AugSpec, ih: int, iw: int, taps: int | None) -> int:
    if not spec.antialias:
        return 2
    if taps is None:
        if params.boxes.device.type == "cpu":
            taps = max_taps(params.boxes, spec.size)
        else:  # every box aug.sample_params can draw for this spec and image size (no device sync)
            taps = _taps_for(spec.size if spec.crop == "random_crop" else max(ih, iw), spec.size)
    if not isinstance(taps, int) or taps < 2:
        raise ValueError(f"taps must be an int >= 2, got {taps!r}")
    if taps > MAX_TAPS:
        raise ValueError(f"antialias filter of {taps} taps per axis (a box up to {taps / 2:g}x the output size): "
                         f"more than {MAX_TAPS} would unroll too far; resize the set first (pixels.resize_uint8)")
    return taps


def _tile(oh: int, ow: int, block, mix: int = 0) -> tuple[int, int]:
    """(BY, BX) output tile of one program. GPU defaults from register counts of the sm_90 build (Mixup
    keeps two samples' accumulators live: a smaller tile); benchmarks/bench_aug.py --sweep re-checks them."""
    if block is not None:
        if (not isinstance(block, (tuple, list)) or len(block) != 2
                or any(not isinstance(v, int) or v < 1 or v & (v - 1) for v in block)):
            raise ValueError(f"block must be two powers of two (rows, cols), got {block!r}")
        return int(block[0]), int(block[1])
    if interpreted():  # the interpreter pays per program: whole images (up to 4096 pixels) per program
        bx = min(triton.next_power_of_2(ow), 64)
        return min(triton.next_power_of_2(oh), 4096 // bx), bx
    bx = min(triton.next_power_of_2(ow), 32)
    return min(triton.next_power_of_2(oh), (512 if mix == 2 else 1024) // bx), bx


def _launch(images, idx, out, *, boxes=None, flip=None, row_perm=None, col_perm=None, partner=None,
            mix_box=None, lam=None, mix=0, lut=None, aff=None, resample=_NEAREST, taps=1, block=None,
            num_warps=4):
    b = out.shape[0]
    if out.numel() == 0:
        return out
    n, c, h, w = images.shape
    f = 1 if row_perm is None else row_perm.shape[1]
    th, tw = h // f, w // f
    oh, ow = out.shape[2], out.shape[3]
    dummy = images
    cont = lambda t: None if t is None else t.contiguous()  # noqa: E731  (no-ops for the loader's tensors)
    idx, boxes, flip, row_perm, col_perm, partner, mix_box = map(cont, (idx, boxes, flip, row_perm, col_perm,
                                                                        partner, mix_box))
    bf16_bits = out.dtype == torch.bfloat16 and interpreted()
    span = 1 + sum((d - 1) * abs(st) for d, st in zip(images.shape, images.stride()))
    by, bx = _tile(oh, ow, block, mix)
    grid = (b * triton.cdiv(oh, by) * triton.cdiv(ow, bx),)
    extra = {} if interpreted() else {"num_warps": num_warps}
    _augment_kernel[grid](
        images, images.stride(0), images.stride(2), images.stride(3), n,
        dummy if idx is None else idx, dummy if boxes is None else boxes,
        dummy if flip is None else flip.view(torch.uint8),
        dummy if row_perm is None else row_perm, dummy if col_perm is None else col_perm, f,
        dummy if partner is None else partner, dummy if mix_box is None else mix_box,
        dummy if lam is None else lam, dummy if lut is None else lut, dummy if aff is None else aff,
        out.view(torch.int16) if bf16_bits else out, *out.stride(),
        th * f, tw * f, oh, ow, th, tw, b,
        C=c, HAS_IDX=idx is not None, RESAMPLE=resample, SHUFFLE=row_perm is not None, FLIP=flip is not None,
        MIX=mix, NORMALIZE=lut is not None, BF16_BITS=bf16_bits, TAPS=taps, IDX64=span >= 2**31,
        S_C=images.stride(1), INTERP=interpreted(), BY=by, BX=bx, **extra)
    return out


def _check_params(params: AugParams, b: int, h: int, w: int, dev: torch.device) -> int:
    if not isinstance(params, AugParams):
        raise ValueError(f"params must be an rd3fast.engine.aug.AugParams, got {type(params).__name__}")
    _check("params.boxes", params.boxes, torch.int32, (b, 4), dev)
    _check("params.flip", params.flip, torch.bool, (b,), dev)
    _check("params.partner", params.partner, torch.int64, (b,), dev)
    _check("params.mix_box", params.mix_box, torch.int32, (4,), dev)
    if not isinstance(params.lam, torch.Tensor) or params.lam.dtype != torch.float32 or params.lam.numel() != 1:
        raise ValueError("params.lam must be a float32 tensor with one element")
    _check_device("params.lam", params.lam, dev)
    if params.mix not in _MIX:
        raise ValueError(f"params.mix must be one of {sorted(_MIX)}, got {params.mix!r}")
    return _check_perms(params.row_perm, params.col_perm, b, h, w, dev)


# ---------------------------------------------------------------------------------------------------
# Public launchers
# ---------------------------------------------------------------------------------------------------
def fused_augment(images: torch.Tensor, idx: torch.Tensor, params: AugParams, spec: AugSpec,
                  dtype: torch.dtype = torch.float32, channels_last: bool = False, *, out: torch.Tensor | None = None,
                  taps: int | None = None, block: tuple[int, int] | None = None, num_warps: int = 4,
                  _mix: bool = True) -> torch.Tensor:
    """aug.augment(images[idx], params, spec, dtype, channels_last) in one pass, without the gather copy.

    images: the resident uint8 set (N, C, H, W), any strides; idx: int64 (B,) rows of it, on the same device
    as images and every tensor in params. Returns (B, C, S, S) in ``dtype`` (float32 / bfloat16 / float16),
    contiguous NCHW or channels_last; or writes into ``out`` (any strides, e.g. a view of a bigger buffer).
    ``taps``: antialias taps per axis (see the module docstring); ``block``: (rows, cols) output tile per
    program; ``num_warps``: Triton launch option.
    """
    dev = _check_images(images)
    b = _check_idx(idx, images.shape[0], dev)
    n, c, h, w = images.shape
    f = _check_params(params, b, h, w, dev)
    if not isinstance(spec, AugSpec):
        raise ValueError(f"spec must be an rd3fast.engine.aug.AugSpec, got {type(spec).__name__}")
    if spec.size < 1:
        raise ValueError(f"spec.size must be >= 1, got {spec.size}")
    lut, aff = _norm_tables(spec.mean, spec.std, c, dev)
    if dtype == torch.uint8:
        raise ValueError("fused_augment writes float32, bfloat16 or float16, not uint8")
    out = _out_tensor(out, (b, c, spec.size, spec.size), dtype, dev, channels_last)
    mix = _MIX[params.mix] if _mix else 0
    ih, iw = (h // f * f, w // f * f)
    return _launch(images, idx, out, boxes=params.boxes, flip=params.flip, row_perm=params.row_perm,
                   col_perm=params.col_perm, partner=params.partner, mix_box=params.mix_box, lam=params.lam,
                   mix=mix, lut=lut, aff=aff, resample=_ANTIALIAS if spec.antialias else _BILINEAR,
                   taps=_taps_constexpr(params, spec, ih, iw, taps), block=block, num_warps=num_warps)


def crop_resize_flip_normalize(images: torch.Tensor, idx: torch.Tensor, params: AugParams, spec: AugSpec,
                               dtype: torch.dtype = torch.float32, channels_last: bool = False, **kw) -> torch.Tensor:
    """fused_augment without the batch mix: aug.augment with params.mix taken as "none" (PatchShuffle is
    still applied when params carry permutations)."""
    return fused_augment(images, idx, params, spec, dtype, channels_last, _mix=False, **kw)


def patch_shuffle_u8(images: torch.Tensor, row_perm: torch.Tensor, col_perm: torch.Tensor,
                     idx: torch.Tensor | None = None, *, out: torch.Tensor | None = None,
                     block: tuple[int, int] | None = None) -> torch.Tensor:
    """aug.patch_shuffle(images[idx] (or images), row_perm, col_perm) as uint8 (B, C, H', W'), H' = H // f * f."""
    dev = _check_images(images)
    n, c, h, w = images.shape
    b = n if idx is None else _check_idx(idx, n, dev)
    if row_perm is None or col_perm is None:
        raise ValueError("patch_shuffle_u8 needs row_perm and col_perm tensors")
    f = _check_perms(row_perm, col_perm, b, h, w, dev)
    out = _out_tensor(out, (b, c, h // f * f, w // f * f), torch.uint8, dev, False)
    return _launch(images, idx, out, row_perm=row_perm, col_perm=col_perm, block=block)


def normalize_u8(images: torch.Tensor, mean, std, dtype: torch.dtype = torch.float32,
                 idx: torch.Tensor | None = None, channels_last: bool = False, *, out: torch.Tensor | None = None,
                 block: tuple[int, int] | None = None) -> torch.Tensor:
    """pixels.eval_transform(images[idx] (or images), mean, std, dtype): (v / 255 - mean) / std, for eval batches."""
    dev = _check_images(images)
    n, c, h, w = images.shape
    b = n if idx is None else _check_idx(idx, n, dev)
    lut, aff = _norm_tables(mean, std, c, dev)
    if dtype == torch.uint8:
        raise ValueError("normalize_u8 writes float32, bfloat16 or float16, not uint8")
    out = _out_tensor(out, (b, c, h, w), dtype, dev, channels_last)
    return _launch(images, idx, out, lut=lut, aff=aff, block=block)
