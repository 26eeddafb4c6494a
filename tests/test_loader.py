"""rd3fast.engine.loader.ResidentLoader: epoch contract, reproducibility, batch fields. CPU only, tiny shapes."""
from __future__ import annotations

import pytest
import torch

from rd3fast.engine import aug
from rd3fast.engine.aug import AugSpec
from rd3fast.engine.loader import Batch, ResidentLoader

MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)
N, C, H, W, S = 103, 3, 10, 10, 8


def spec_(**kw) -> AugSpec:
    base = dict(size=S, mean=MEAN, std=STD, crop="rrc", rrc_scale=(0.3, 1.0), mix="cutmix", patch_shuffle=2)
    base.update(kw)
    return AugSpec(**base)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (N, C, H, W), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return torch.arange(N)  # distinct: a label is its image's index


def make(images, labels, **kw) -> ResidentLoader:
    spec = kw.pop("spec", spec_())
    kw.setdefault("batch_size", 10)
    return ResidentLoader(images, labels, spec, backend="torch", **kw)


def batches_equal(a: list[Batch], b: list[Batch]) -> bool:
    if len(a) != len(b):
        return False
    for p, q in zip(a, b):
        if not (torch.equal(p.x, q.x) and torch.equal(p.y, q.y) and torch.equal(p.y_partner, q.y_partner)
                and torch.equal(p.lam, q.lam) and p.params.mix == q.params.mix):
            return False
        for name in ("boxes", "flip", "row_perm", "col_perm", "partner", "mix_box", "lam"):
            if not torch.equal(getattr(p.params, name), getattr(q.params, name)):
                return False
    return True


def test_len_with_and_without_drop_last(images, labels):
    assert len(make(images, labels)) == 11
    assert len(make(images, labels, drop_last=True)) == 10
    assert len(make(images[:100], labels[:100])) == 10
    assert len(make(images[:100], labels[:100], drop_last=True)) == 10
    assert len(list(make(images, labels))) == 11
    assert len(list(make(images, labels, drop_last=True))) == 10


def test_epoch_is_a_permutation_of_the_dataset(images, labels):
    loader = make(images, labels)
    for _ in range(2):
        bs = list(loader)
        assert [len(b.y) for b in bs] == [10] * 10 + [3]
        assert sorted(torch.cat([b.y for b in bs]).tolist()) == list(range(N))


def test_drop_last_sees_a_subset(images, labels):
    loader = make(images, labels, drop_last=True)
    seen = torch.cat([b.y for b in loader]).tolist()
    assert len(seen) == len(set(seen)) == len(loader) * 10 == 100
    assert set(seen) <= set(range(N))
    # over a few epochs the dropped samples change, so everything is seen eventually
    union = set(seen)
    for _ in range(5):
        union |= set(torch.cat([b.y for b in loader]).tolist())
    assert union == set(range(N))


def test_batches_carry_the_indexed_images(images, labels):
    """x is augment() of the images whose labels are y, with the batch's own params."""
    spec = spec_()
    loader = make(images, labels, spec=spec)
    for b in loader:
        idx = b.y  # labels are indices
        assert torch.equal(b.x, aug.augment(images[idx], b.params, spec))


def test_different_epochs_differ(images, labels):
    loader = make(images, labels)
    e0 = torch.cat([b.y for b in loader])
    e1 = torch.cat([b.y for b in loader])
    assert not torch.equal(e0, e1)


def test_iterating_twice_without_set_epoch_gives_new_batches(images, labels):
    loader = make(images, labels)
    a, b = list(loader), list(loader)
    assert not batches_equal(a, b)
    assert not torch.equal(a[0].params.boxes, b[0].params.boxes)


def test_same_seed_same_batches_across_instances(images, labels):
    a = make(images, labels, seed=3)
    b = make(images, labels, seed=3)
    for _ in range(2):  # two epochs each
        assert batches_equal(list(a), list(b))


def test_different_seeds_differ(images, labels):
    a = list(make(images, labels, seed=3))
    b = list(make(images, labels, seed=4))
    assert not torch.equal(torch.cat([x.y for x in a]), torch.cat([x.y for x in b]))
    assert not batches_equal(a, b)


def test_seed_epoch_streams_do_not_collide(images, labels):
    """(seed, epoch) pairs a trainer realistically meets must give distinct streams."""
    orders = {}
    for seed in range(3):
        loader = make(images, labels, seed=seed)
        for epoch in range(5):
            orders[(seed, epoch)] = tuple(torch.cat([idx for idx, _ in loader.draws(epoch)]).tolist())
    assert len(set(orders.values())) == len(orders)


def test_set_epoch_reproduces_epoch_regardless_of_history(images, labels):
    fresh = make(images, labels, seed=5)
    fresh.set_epoch(2)
    ref = list(fresh)
    other = make(images, labels, seed=5)
    for _ in range(3):
        list(other)  # history: epochs 0..2 consumed
    other.set_epoch(2)
    assert batches_equal(list(other), ref)
    # and without set_epoch the third pass of a fresh loader is epoch 2 as well
    third = make(images, labels, seed=5)
    list(third), list(third)
    assert batches_equal(list(third), ref)


def test_partial_iteration_then_set_epoch(images, labels):
    loader = make(images, labels, seed=6)
    it = iter(loader)
    next(it), next(it)  # abandon mid-epoch
    loader.set_epoch(0)
    assert batches_equal(list(loader), list(make(images, labels, seed=6)))


def test_shuffle_false_is_arange_order(images, labels):
    loader = make(images, labels, shuffle=False)
    for _ in range(2):
        assert torch.cat([b.y for b in loader]).tolist() == list(range(N))


def test_partner_labels_and_lam(images, labels):
    for spec in (spec_(mix="cutmix"), spec_(mix="mixup"), spec_(mix="none"), spec_(mix="cutmix", mix_prob=0.0)):
        for b in make(images, labels, spec=spec):
            assert b.y.dtype == torch.int64 and b.y_partner.dtype == torch.int64
            assert torch.equal(b.y_partner, b.y[b.params.partner])
            assert sorted(b.params.partner.tolist()) == list(range(len(b.y)))
            assert b.lam.dtype == torch.float32 and b.lam.dim() == 0
            assert torch.equal(b.lam, b.params.lam)
            assert 0.0 <= b.lam.item() <= 1.0
            if spec.mix == "none" or spec.mix_prob == 0.0:
                assert b.lam.item() == 1.0 and b.params.mix in ("none", spec.mix)
            if b.lam.item() < 1.0:
                assert b.params.mix == spec.mix


def test_labels_are_cast_to_int64(images):
    lab = torch.arange(N, dtype=torch.int32)
    b = next(iter(make(images, lab)))
    assert b.y.dtype == torch.int64 and b.y_partner.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_x_shape_dtype_layout_and_range(images, labels, dtype, channels_last):
    spec = spec_(mix="mixup")
    loader = make(images, labels, spec=spec, dtype=dtype, channels_last=channels_last, batch_size=32)
    m = torch.tensor(MEAN).view(1, -1, 1, 1)
    s = torch.tensor(STD).view(1, -1, 1, 1)
    lo, hi = (0 - m) / s, (1 - m) / s
    bs = list(loader)
    assert [b.x.shape for b in bs] == [(32, C, S, S)] * 3 + [(7, C, S, S)]
    for b in bs:
        assert b.x.dtype == dtype
        if channels_last:
            assert b.x.is_contiguous(memory_format=torch.channels_last)
        else:
            assert b.x.is_contiguous()
        x = b.x.float()
        slack = 1e-5 if dtype == torch.float32 else 2e-2
        assert (x >= lo - slack).all() and (x <= hi + slack).all()
    allx = torch.cat([b.x.float() for b in bs])
    # the range is actually used: close to both ends in every channel
    assert ((allx.amin(dim=(0, 2, 3)) - lo.flatten()).abs() < 0.5).all()
    assert ((allx.amax(dim=(0, 2, 3)) - hi.flatten()).abs() < 0.5).all()


def test_bad_inputs_raise(images, labels):
    with pytest.raises(ValueError):
        make(images.float(), labels)
    with pytest.raises(ValueError):
        make(images[0], labels[:1])  # 3-D
    with pytest.raises(ValueError):
        make(images, labels[:-1])
    with pytest.raises(ValueError):
        make(images[:-1], labels)


def test_draws_match_iteration(images, labels):
    """draws(epoch) gives the indices and params that iterating epoch ``epoch`` uses, without advancing."""
    loader = make(images, labels, seed=7)
    loader.set_epoch(1)
    draws = list(loader.draws(1))
    assert loader.epoch == 1
    for (idx, params), b in zip(draws, loader, strict=True):
        assert torch.equal(idx, b.y)
        assert torch.equal(params.boxes, b.params.boxes) and torch.equal(params.partner, b.params.partner)
        again = loader.batch(idx, params)
        assert torch.equal(again.x, b.x) and torch.equal(again.y_partner, b.y_partner)


def test_auto_backend_on_cpu_is_torch(images, labels):
    loader = ResidentLoader(images, labels, spec_(), 10)
    assert loader.backend == "torch"
    assert loader.images.dtype == torch.uint8 and loader.images.is_contiguous()
