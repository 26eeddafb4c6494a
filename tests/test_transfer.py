"""rd3fast.engine.transfer: many small tensors packed into one buffer and unpacked as views, bit for bit."""
import pytest
import torch

from rd3fast.engine import aug
from rd3fast.engine.transfer import pack, to_device, unpack


def _mixed() -> list:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randperm(7, generator=g),  # int64, 56 bytes
        torch.randint(-5, 40, (7, 4), generator=g, dtype=torch.int32),  # 112 bytes
        torch.rand(7, generator=g) < 0.5,  # bool: 7 bytes, so the next piece needs padding
        None,
        torch.tensor(0.625),  # 0-dim float32
        torch.randn(3, 5, generator=g).half(),  # fp16: 30 bytes
        torch.zeros(0, dtype=torch.int64),  # empty
        torch.randn(4, 6, generator=g)[:, ::2],  # non-contiguous view
        torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8),
    ]


def test_pack_unpack_roundtrip_is_exact():
    tensors = _mixed()
    buf, layout = pack(tensors)
    assert buf.dtype == torch.uint8 and buf.dim() == 1 and len(buf) == layout.nbytes
    out = unpack(buf, layout)
    assert len(out) == len(tensors)
    for t, o in zip(tensors, out):
        if t is None:
            assert o is None
            continue
        assert o.dtype == t.dtype and o.shape == t.shape
        assert torch.equal(o, t)


def test_pieces_are_aligned_and_disjoint():
    _, layout = pack(_mixed())
    spans = [(off, off + n) for off, n, _, _ in (p for p in layout.pieces if p is not None)]
    assert all(off % 16 == 0 for off, _ in spans)
    for (a0, a1), (b0, _) in zip(spans, spans[1:]):
        assert a1 <= b0  # bytes of one piece never overlap the next
    assert spans[-1][1] <= layout.nbytes


def test_unpacked_views_share_the_buffer():
    buf, layout = pack([torch.arange(3), torch.ones(2)])
    a, b = unpack(buf, layout)
    buf.zero_()
    assert torch.equal(a, torch.zeros(3, dtype=torch.int64)) and torch.equal(b, torch.zeros(2))


def test_pack_refuses_device_tensors():
    with pytest.raises(ValueError, match="CPU tensors"):
        pack([torch.empty(2, device="meta")])


def test_to_device_on_cpu_keeps_values():
    tensors = _mixed()
    for t, o in zip(tensors, to_device(tensors, "cpu")):
        assert (t is None and o is None) or torch.equal(t, o)


def test_augparams_to_with_moves_params_and_extras():
    spec = aug.AugSpec(size=8, mean=(0.5,), std=(0.5,), patch_shuffle=2, crop="rrc", mix="cutmix")
    params = aug.sample_params(spec, 5, 8, 8, torch.Generator().manual_seed(1))
    idx = torch.arange(5)
    moved, [idx2] = params.to_with("cpu", idx)
    assert torch.equal(idx2, idx) and moved.mix == params.mix
    for name, t in params.tensors().items():
        m = moved.tensors()[name]
        assert (t is None and m is None) or (m.dtype == t.dtype and torch.equal(m, t))


@pytest.mark.gpu
def test_to_device_on_cuda_is_one_exact_copy():
    tensors = _mixed()
    out = to_device(tensors, "cuda")
    torch.cuda.synchronize()
    for t, o in zip(tensors, out):
        if t is None:
            assert o is None
            continue
        assert o.is_cuda and o.dtype == t.dtype and torch.equal(o.cpu(), t)
    devs = {o.untyped_storage().data_ptr() for o in out if o is not None and o.numel()}
    assert len(devs) == 1  # every piece is a view of the one device buffer
