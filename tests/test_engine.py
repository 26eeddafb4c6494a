"""The engine: K seeds at once, the soft-label cache, the CUDA-graph step (fallback on CPU; gpu tests)."""
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rd3fast.config import PRESETS, resolve
from rd3fast.data.sets import ImageSet
from rd3fast.engine.experiment import Experiment
from rd3fast.engine.graph import graph_unavailable_reason
from rd3fast.engine.models import build_model
from rd3fast.engine.soft_labels import PermCodec, SoftLabelCache, resolve_topk
from rd3fast.engine.students import Students
from rd3fast.engine.teacher import Relabeler
from rd3fast.engine.train import build_engine, train_seeds
from rd3fast.errors import RD3Error


def toy_experiment(device="cpu", classes=5, n_per=8, size=12, preset="rd3", teachers=1, **overrides):
    """A random uint8 set with random-init teachers: enough to test the engine's bookkeeping."""
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (classes * n_per, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(classes).repeat_interleave(n_per)
    data = ImageSet(imgs, labels, [str(c) for c in range(classes)], "toy")
    settings = dict(dataset="digits", student="convnet-d2-w8-bn", epochs=2, batch_size=10, image_size=size,
                    num_classes=classes, mean=(0.5,) * 3, std=(0.25,) * 3, eval_every=1, patch_shuffle=2)
    cfg = resolve(preset, overrides={**settings, **overrides})
    torch.manual_seed(123)
    teacher = Relabeler([build_model("convnet-d2-w8-bn", classes, size) for _ in range(teachers)],
                        logit_norm=cfg.logit_norm, bn_train=cfg.teacher_bn_train).to(device)
    return Experiment(cfg=cfg, train=data, val=data, relabeler=teacher, device=torch.device(device))


def params_of(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_k_students_at_once_equal_one_by_one():
    exp = toy_experiment()
    one_by_one = [train_seeds(exp, [s], progress=False)[0] for s in (0, 1, 2)]
    together = train_seeds(exp, [0, 1, 2], progress=False)
    for (ra, ma), (rb, mb) in zip(one_by_one, together):
        assert ra.seed == rb.seed
        for ea, eb in zip(ra.epochs, rb.epochs):
            assert abs(ea["loss"] - eb["loss"]) < 1e-4 * max(1.0, abs(ea["loss"]))
        assert torch.allclose(params_of(ma), params_of(mb), atol=1e-4)
        # BatchNorm running statistics followed each seed's own batches
        assert torch.allclose(ma.features[1].running_mean, mb.features[1].running_mean, atol=1e-4)
    # and the seeds really differ from each other
    assert not torch.allclose(params_of(together[0][1]), params_of(together[1][1]))


def test_students_wrapper_shapes_and_decay_ndims():
    models = [build_model("convnet-d1-w4-bn", 3, 8) for _ in range(2)]
    st = Students(models)
    x = torch.randn(2, 5, 3, 8, 8)
    assert st(x).shape == (2, 5, 3)
    nd = {n: d for n, _, d in st.named_model_parameters()}
    assert nd["features.0.weight"] == 4 and nd["features.0.bias"] == 1 and nd["features.1.weight"] == 1
    single = Students([models[0]])
    assert single.model(0) is models[0] and single(x[:1]).shape == (1, 5, 3)


def test_perm_codec_roundtrip():
    for f in (2, 3, 4):
        codec = PermCodec(f)
        perms = torch.argsort(torch.rand(50, f), dim=1)
        ranks = codec.encode(perms)
        assert ranks.dtype.itemsize == 1 and torch.equal(codec.decode(ranks), perms)


def test_cache_record_then_replay_reproduces_batches(tmp_path):
    exp = toy_experiment(cache=str(tmp_path / "c"), cache_mode="record", cache_topk=2)
    [(recorded, _)] = train_seeds(exp, [0], progress=False)
    assert any("soft-label cache" in n for n in recorded.notes)
    cache = SoftLabelCache(tmp_path / "c", "replay")
    assert cache.meta["epochs"] == [0, 1]
    # The recorded draws rebuild exactly the batches a fresh loader with the same seed makes.
    from rd3fast.engine.aug import AugSpec
    from rd3fast.engine.loader import ResidentLoader

    cfg = exp.cfg
    spec = AugSpec.from_config(cfg, cfg.image_size, cfg.mean, cfg.std)
    loader = ResidentLoader(exp.train.images, exp.train.labels, spec, cfg.batch_size, seed=0)
    for epoch in (0, 1):
        live = list(loader.draws(epoch))
        replayed = list(cache.epoch(epoch, torch.device("cpu")))
        assert len(live) == len(replayed)
        with torch.no_grad():
            for (idx, p), (ridx, rp, soft) in zip(live, replayed):
                assert torch.equal(idx, ridx)
                assert torch.equal(loader.batch(idx, p).x, loader.batch(ridx, rp).x)  # bitwise
                teacher = exp.relabeler(loader.batch(idx, p).x)
                top = teacher.topk(2, 1)
                assert torch.allclose(soft.gather(1, top.indices), top.values, atol=2e-2)  # fp16
    # Replay trains a new student without a teacher.
    replay_cfg = exp.cfg.replace(cache_mode="replay")
    no_teacher = Experiment(cfg=replay_cfg, train=exp.train, val=exp.val, relabeler=None, device=exp.device)
    [(replayed_run, _)] = train_seeds(no_teacher, [5], progress=False)
    assert len(replayed_run.evals) == 2 and all(e["loss"] > 0 for e in replayed_run.epochs)


def test_cache_size_is_a_fiftieth_of_fkd(tmp_path):
    """1000 classes (ImageNet-like), PatchShuffle 2, batch 50: bytes per image per epoch vs FKD's ~2 kB."""
    exp = toy_experiment(classes=1000, n_per=1, size=8, batch_size=50, epochs=1,
                         cache=str(tmp_path / "c"), cache_mode="record", cache_topk=5)
    exp.relabeler = Relabeler([build_model("convnet-d1-w4", 1000, 8)])
    train_seeds(exp, [0], progress=False)
    cache = SoftLabelCache(tmp_path / "c", "replay")
    per_image = cache.size_bytes() / 1000
    assert cache.fkd_bytes() / cache.size_bytes() >= 50, per_image


def test_cache_errors(tmp_path):
    with pytest.raises(RD3Error, match="meta.json missing"):
        SoftLabelCache(tmp_path / "none", "replay")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(RD3Error, match="not empty"):
        SoftLabelCache(tmp_path / "full", "record")
    with pytest.raises(RD3Error, match="--cache FOLDER"):
        resolve(overrides=dict(cache_mode="replay"))


class _Fp16Logits(torch.nn.Module):
    """A teacher whose logits are fp16 values already: what a lossless (fp16) cache stores of them is exact."""

    def __init__(self, relabeler: torch.nn.Module) -> None:
        super().__init__()
        self.relabeler = relabeler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relabeler(x).half().float()


def _replay(exp, folder, seeds, **overrides):
    cfg = exp.cfg.replace(cache=str(folder), cache_mode="replay", **overrides)
    no_teacher = Experiment(cfg=cfg, train=exp.train, val=exp.val, relabeler=None, device=exp.device)
    return [r for r, _ in train_seeds(no_teacher, seeds, progress=False)]


def test_cache_default_at_10_classes_is_lossless(tmp_path):
    """10 classes, default --cache-topk (-1): every logit is stored as fp16 (top-k would save nothing). What
    replay gives back is exactly the teacher's logits rounded to fp16, so a replay of the recorded seed is the
    recording run with fp16-rounded soft labels: bit for bit when the teacher's logits are fp16 values, and
    within that rounding's effect otherwise."""
    exp = toy_experiment(classes=10, n_per=4, cache=str(tmp_path / "c"), cache_mode="record")
    assert exp.cfg.cache_topk == -1 and exp.cfg.cache_bits == 16
    [(recorded, rec_model)] = train_seeds(exp, [0], progress=False)
    cache = SoftLabelCache(tmp_path / "c", "replay")
    assert cache.meta["topk"] == 0 and cache.meta["bits"] == 16
    from rd3fast.engine.aug import AugSpec
    from rd3fast.engine.loader import ResidentLoader

    cfg = exp.cfg
    spec = AugSpec.from_config(cfg, cfg.image_size, cfg.mean, cfg.std)
    loader = ResidentLoader(exp.train.images, exp.train.labels, spec, cfg.batch_size, seed=0)
    with torch.no_grad():
        for epoch in (0, 1):
            for idx, p, soft in cache.epoch(epoch, torch.device("cpu")):
                assert soft.shape == (len(idx), 10)
                assert torch.equal(soft, exp.relabeler(loader.batch(idx, p).x).half().float())

    [replayed] = _replay(exp, tmp_path / "c", [0])
    for a, b in zip(recorded.epochs, replayed.epochs):  # only the fp16 rounding of the logits differs
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)

    # With a teacher whose logits are fp16 values, recording and replaying seed 0 train the same student.
    exact = toy_experiment(classes=10, n_per=4, cache=str(tmp_path / "e"), cache_mode="record")
    exact.relabeler = _Fp16Logits(exact.relabeler)
    [(recorded, rec_model)] = train_seeds(exact, [0], progress=False)
    no_teacher = Experiment(cfg=exact.cfg.replace(cache_mode="replay"), train=exact.train, val=exact.val,
                            relabeler=None, device=exact.device)
    [(replayed, rep_model)] = train_seeds(no_teacher, [0], progress=False)
    assert [e["loss"] for e in recorded.epochs] == [e["loss"] for e in replayed.epochs]
    assert [e["top1"] for e in recorded.evals] == [e["top1"] for e in replayed.evals]
    assert torch.equal(params_of(rec_model), params_of(rep_model))


def test_cache_resolve_topk():
    assert [resolve_topk(-1, n) for n in (10, 100, 101, 1000)] == [0, 0, 5, 5]
    assert [resolve_topk(k, 10) for k in (0, 1, 5, 9, 10, 50)] == [0, 1, 5, 9, 0, 0]


@pytest.mark.parametrize("topk", [0, 3])
def test_cache_8bit_codes_within_half_a_step(tmp_path, topk):
    """--cache-bits 8: each replayed value is within (max - min) / 510 of the fp16 value a 16-bit cache would
    replay (max and min over the image's stored values: all logits, or the top k and the mean of the rest)."""
    exp = toy_experiment(classes=10, n_per=4, cache=str(tmp_path / "c"), cache_mode="record", cache_topk=topk,
                         cache_bits=8)
    train_seeds(exp, [0], progress=False)
    cache = SoftLabelCache(tmp_path / "c", "replay")
    assert cache.meta["bits"] == 8 and cache.meta["topk"] == topk
    from rd3fast.engine.aug import AugSpec
    from rd3fast.engine.loader import ResidentLoader

    cfg = exp.cfg
    spec = AugSpec.from_config(cfg, cfg.image_size, cfg.mean, cfg.std)
    loader = ResidentLoader(exp.train.images, exp.train.labels, spec, cfg.batch_size, seed=0)
    n = 0
    with torch.no_grad():
        for idx, p, soft in cache.epoch(1, torch.device("cpu")):
            logits = exp.relabeler(loader.batch(idx, p).x)
            if topk:
                top = logits.topk(topk, 1)
                tail = (logits.sum(1) - top.values.sum(1)) / (logits.shape[1] - topk)
                stored = torch.cat([top.values, tail[:, None]], 1)
                rest_lo = soft.scatter(1, top.indices, float("inf")).amin(1, keepdim=True)
                rest_hi = soft.scatter(1, top.indices, float("-inf")).amax(1, keepdim=True)
                assert torch.equal(rest_lo, rest_hi)  # every other class gets the one stored tail value
                got = torch.cat([soft.gather(1, top.indices), rest_lo], 1)
            else:
                stored, got = logits, soft
            fp16 = stored.half().float()
            half_step = (fp16.amax(1, keepdim=True) - fp16.amin(1, keepdim=True)) / 510
            # fp32 arithmetic of the decode (min + code * step): a few units in the last place of the value
            assert ((got - fp16).abs() <= half_step + 1e-6 * fp16.abs().amax(1, keepdim=True)).all()
            assert (half_step > 0).all()
            n += len(idx)
    assert n == 40


def test_cache_8bit_codec_edge_cases():
    from rd3fast.engine.soft_labels import _decode, _encode

    torch.manual_seed(0)
    for scale in (1e-3, 1.0, 30.0, 1e3):
        v = torch.randn(500, 10) * scale + torch.randn(500, 1) * 3 * scale
        codes, q = _encode(v, 8)
        assert codes.dtype == torch.uint8 and q.dtype == torch.float16 and q.shape == (500, 2)
        fp16 = v.half().float()
        err = (_decode(codes, q) - fp16).abs()
        half_step = (fp16.amax(1, keepdim=True) - fp16.amin(1, keepdim=True)) / 510
        assert (err <= half_step + 1e-6 * fp16.abs().amax(1, keepdim=True)).all(), scale
        assert codes.amin(1).eq(0).all() and codes.amax(1).eq(255).all()  # min and max decode exactly
    flat = torch.full((3, 10), 2.25)
    assert torch.equal(_decode(*_encode(flat, 8)), flat)  # one value per row: every code 0, exact


def test_cache_replay_notes_name_the_compression(tmp_path):
    exp = toy_experiment(classes=10, n_per=4, epochs=1, cache=str(tmp_path / "full"), cache_mode="record")
    [(recorded, _)] = train_seeds(exp, [0], progress=False)
    assert any("soft-label cache" in n and "FKD" in n for n in recorded.notes)
    replays = _replay(exp, tmp_path / "full", [0, 1])
    for r in replays:
        [note] = [n for n in r.notes if "replayed" in n]
        assert "all logits, fp16" in note and "lossy" not in note and "1 recorded epoch" in note, note
    lossy = toy_experiment(classes=10, n_per=4, epochs=1, cache=str(tmp_path / "k2"), cache_mode="record",
                           cache_topk=2, cache_bits=8)
    train_seeds(lossy, [0], progress=False)
    [r] = _replay(lossy, tmp_path / "k2", [3])
    [note] = [n for n in r.notes if "replayed" in n]
    assert "top-2 logits + the mean of the rest, 8-bit codes (lossy)" in note, note


def test_graph_fallback_reasons():
    cfg = resolve("rd3")
    assert "CUDA device" in graph_unavailable_reason(cfg, torch.device("cpu"))
    assert graph_unavailable_reason(cfg.replace(cuda_graph="off"), torch.device("cuda")) == "--cuda-graph off"
    assert "SGD" in graph_unavailable_reason(cfg.replace(optimizer="sgd"), torch.device("cuda"))
    assert graph_unavailable_reason(cfg, torch.device("cuda")) is None
    [(r, _)] = train_seeds(toy_experiment(), [0], progress=False)
    assert r.notes == ["eager step: CUDA graphs need a CUDA device"]


@pytest.mark.gpu
def test_graph_and_eager_agree_on_cuda():
    """Many steps of the whole-step graph vs eager: the same losses within bf16 noise."""
    runs = {}
    for mode in ("off", "on"):
        exp = toy_experiment("cuda", classes=10, n_per=20, size=32, epochs=6, batch_size=20, cuda_graph=mode)
        [(r, _)] = train_seeds(exp, [0], progress=False)
        runs[mode] = [e["loss"] for e in r.epochs]
        assert r.notes[0].startswith("whole step" if mode == "on" else "eager")
        if mode == "on":  # 6 epochs x 10 steps: 3 eager warm-up steps, then the graph every step
            assert r.notes[1].startswith("57 of 60 steps replayed the graph"), r.notes
    for a, b in zip(runs["off"], runs["on"]):
        assert abs(a - b) <= 0.05 * abs(a) + 1e-4


@pytest.mark.gpu
def test_k_at_once_on_cuda_graphed():
    exp = toy_experiment("cuda", classes=10, n_per=10, size=32, epochs=3, batch_size=20)
    one = [train_seeds(exp, [s], progress=False)[0][0] for s in (0, 1)]
    both = [r for r, _ in train_seeds(exp, [0, 1], progress=False)]
    for a, b in zip(one, both):
        assert abs(a.epochs[-1]["loss"] - b.epochs[-1]["loss"]) <= 0.05 * abs(a.epochs[-1]["loss"]) + 1e-4


# --- capture safety ---------------------------------------------------------------------------------
# A captured CUDA graph replays device work only: a host sync inside the step (.item(), bool(tensor),
# boolean-mask indexing, nonzero) fails the capture or bakes one step's value into every replay, and a
# tensor built from host data inside the step is a host-to-device copy that capture cannot record. These
# ops are the same on the CPU, so the step is checked here, in CI, for every preset the GPU would graph.
aten = torch.ops.aten
_SYNCING = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim,
            aten.unique_consecutive, aten.equal, aten.is_nonzero, aten.lift_fresh, aten.lift_fresh_copy}
_MASK_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


class HostSyncs(TorchDispatchMode):
    """Records every op that would synchronize with (or copy from) the host, with the rd3fast line that ran it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        bad = packet in _SYNCING or (packet in _MASK_INDEXING and any(
            isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in (args[1] or ())))
        if bad and not self.paused:
            ours = [f"{Path(fr.filename).name}:{fr.lineno}" for fr in traceback.extract_stack()
                    if "/rd3fast/" in fr.filename or "/kernels/" in fr.filename]
            self.found.append(f"{func} at {' < '.join(reversed(ours[-3:])) or 'torch internals'}")
        return func(*args, **(kwargs or {}))


def _checked_steps(eng, draws, steps=2) -> list[str]:
    """One unchecked warm-up step (GraphedStep runs three eagerly: constants are made and cached there),
    then ``steps`` steps under HostSyncs. The optimizer is left out: on CUDA the graphed step uses torch's
    capturable AdamW, which is sync-free by construction but cannot be built on a CPU."""
    mode = HostSyncs()
    plain_step = eng.optimizer.step

    def optimizer_step(*a, **kw):
        mode.paused = True
        try:
            return plain_step(*a, **kw)
        finally:
            mode.paused = False

    eng.optimizer.step = optimizer_step
    for n, (idx, params, cached) in zip(range(1 + steps), draws):
        eng.optimizer.zero_grad(set_to_none=True)
        mode.paused = n == 0
        with mode:
            eng.step(idx, params, cached)
    return mode.found


def test_host_sync_detector_flags_what_breaks_a_capture():
    x = torch.arange(6.0)
    with HostSyncs() as mode:
        x.sum().item()
        _ = x[x > 2]
        torch.tensor([1.0, 2.0])
        _ = x[torch.tensor([0, 1])]  # the index is built from host data (flagged); integer indexing itself is fine
        (x * 2).sum()
    found = " | ".join(mode.found)
    assert "_local_scalar_dense" in found and "index.Tensor" in found and found.count("lift_fresh") == 2
    assert len(mode.found) == 4


GRAPHED_PRESETS = [p for p in PRESETS if graph_unavailable_reason(resolve(p), torch.device("cuda")) is None
                   and resolve(p).loss != "ce"]


@pytest.mark.parametrize("preset", GRAPHED_PRESETS)
def test_step_of_every_graphed_preset_is_sync_free(preset):
    cfg = resolve(preset)
    exp = toy_experiment(preset=preset, teachers=len(cfg.teacher), ema_decay=cfg.ema_decay or 0.9,
                         patch_shuffle=cfg.patch_shuffle, aug_backend="torch")
    eng = build_engine(exp, [0])
    draws = ([[i], [p], []] for i, p in eng.loaders[0].draws(0))
    assert _checked_steps(eng, draws) == []


def test_k_at_once_and_cache_replay_steps_are_sync_free(tmp_path):
    exp = toy_experiment(aug_backend="torch")
    eng = build_engine(exp, [0, 1, 2])
    draws = ([[a[0] for a in d], [a[1] for a in d], []] for d in zip(*(ld.draws(0) for ld in eng.loaders)))
    assert _checked_steps(eng, draws) == []

    train_seeds(toy_experiment(cache=str(tmp_path / "c"), cache_mode="record", cache_topk=2), [0], progress=False)
    replay = toy_experiment(cache=str(tmp_path / "c"), cache_mode="replay", aug_backend="torch")
    replay.relabeler = None
    eng = build_engine(replay, [0, 1])
    draws = ([[i] * 2, [p] * 2, [soft] * 2] for i, p, soft in eng.cache.epoch(0, torch.device("cpu")))
    assert _checked_steps(eng, draws) == []
