"""Coupled-method sets (MTT / TESLA / DATM) as their authors evaluate them: the set's own soft labels and
learned lr, DSA, ZCA, the mtt preset's schedule (a fresh SGD at the decay)."""
import json

import pytest
import torch
import torch.nn.functional as F

from rd3fast import run
from rd3fast.config import resolve
from rd3fast.data.pixels import normalize
from rd3fast.data.sets import BUILTIN, load_real
from rd3fast.engine.experiment import prepare
from rd3fast.engine.losses import total_loss
from rd3fast.engine.train import train
from rd3fast.errors import RD3Error

DIGITS = BUILTIN["digits"]
STUDENT = "convnet-d1-w8"


def mtt_folder(root, *, soft=True, lr=0.02, per_class=2, seed=0):
    """An MTT-style folder: images_best.pt as normalized floats (model space), labels_best.pt as float
    logits (or int class indices), lr_best.pt as a 0-d tensor."""
    real = load_real("digits", "train")
    g = torch.Generator().manual_seed(seed)
    picks = torch.cat([torch.nonzero(real.labels == c).flatten()[:per_class] for c in range(10)])
    x = normalize(real.images[picks].expand(-1, 3, -1, -1).float(), DIGITS.mean, DIGITS.std)
    x = x + 0.05 * torch.randn(x.shape, generator=g)  # "optimized" images: not exactly any real pixels
    y = real.labels[picks]
    root.mkdir(parents=True, exist_ok=True)
    torch.save(x, root / "images_best.pt")
    labels = (4.0 * F.one_hot(y, 10).float() + torch.randn(len(y), 10, generator=g)) if soft else y
    torch.save(labels, root / "labels_best.pt")
    if lr is not None:
        torch.save(torch.tensor(lr), root / "lr_best.pt")
    return root, x, labels


def mtt_args(folder, out, *extra):
    return ["--preset", "mtt", "--dataset", "digits", "--distilled", str(folder), "--student", STUDENT,
            "--epochs", "2", "--eval-every", "2", "--milestones", "2", "--seeds", "0", "--out", str(out),
            "--no-progress", *extra]


def test_mtt_folder_round_trips_through_run(tmp_path, capsys):
    folder, _, _ = mtt_folder(tmp_path / "mtt")
    assert run.main(mtt_args(folder, tmp_path / "res")) == 0
    printed = capsys.readouterr().out
    res = json.loads((tmp_path / "res" / "results.json").read_text())
    cfg = res["config"]
    # The resolved config shows what was trained with: the learned lr, the set's labels, DSA.
    assert cfg["lr"] == pytest.approx(0.02) and cfg["lr_from_set"] is True
    assert cfg["label_source"] == "set" and cfg["aug"] == "dsa" and cfg["optimizer"] == "sgd"
    assert "lr_from_set" in printed and "0.02" in printed
    notes = " | ".join(res["runs"][0]["notes"] if "runs" in res else res["seeds"][0]["notes"])
    assert "the set's own soft labels" in notes and "lr 0.02 from the set" in notes and "as stored" in notes
    assert all(e["loss"] is not None for e in (res.get("runs") or res["seeds"])[0]["epochs"])


def test_hard_labels_stay_hard_and_explicit_lr_wins(tmp_path):
    folder, _, labels = mtt_folder(tmp_path / "mtt", soft=False, lr=None)
    exp = prepare(resolve("mtt", overrides={"dataset": "digits", "distilled": str(folder), "student": STUDENT,
                                            "lr": "0.05", "epochs": 1}), progress=False)
    assert exp.train.soft is None and torch.equal(exp.train.labels, labels)
    assert exp.cfg.lr == 0.05 and exp.cfg.lr_from_set is False
    # --lr from-set on a folder without lr_best.pt: one clear error
    with pytest.raises(RD3Error, match="ships no learned learning rate"):
        prepare(resolve("mtt", overrides={"dataset": "digits", "distilled": str(folder), "lr": "from-set"}),
                progress=False)


def test_bad_combinations_are_one_line_errors(tmp_path, capsys):
    folder, _, _ = mtt_folder(tmp_path / "mtt", soft=False)
    with pytest.raises(RD3Error, match="has hard labels"):
        prepare(resolve("mtt", overrides={"dataset": "digits", "distilled": str(folder), "loss": "kl"}),
                progress=False)
    with pytest.raises(RD3Error, match="--aug dsa replaces the crop"):
        resolve("rd3-small", overrides={"aug": "dsa"})
    with pytest.raises(RD3Error, match="--zca: whitening is applied before augmentation"):
        resolve("rd3-small", overrides={"zca": "true"})
    assert run.main(mtt_args(folder, tmp_path / "r", "--cache", str(tmp_path / "c"), "--cache-mode", "record")) == 2
    assert "does not apply with --aug dsa" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_set_label_loss_is_datm_soft_cross_entropy():
    g = torch.Generator().manual_seed(0)
    s, t, tp = (torch.randn(6, 10, generator=g) for _ in range(3))
    y = t.argmax(1)
    lam = torch.tensor(0.7)
    # DATM distill/evaluation.py SoftCrossEntropy: sum(-log_softmax(s) * softmax(t)) / batch
    datm = (-F.log_softmax(s, 1) * F.softmax(t, 1)).sum() / 6
    assert torch.allclose(total_loss("ce", s, t, y, y, lam, 20.0, False, 0.0), datm)
    # Mixed batches weigh the image's and its partner's labels, as mixed CE does for hard labels.
    datm_p = (-F.log_softmax(s, 1) * F.softmax(tp, 1)).sum() / 6
    got = total_loss("ce", s, t, y, y, lam, 20.0, False, 0.0, target_partner=tp)
    assert torch.allclose(got, 0.7 * datm + 0.3 * datm_p)
    # Hard labels only (no soft target) keep plain CE; a soft loss without targets is a bug, not a default.
    assert torch.allclose(total_loss("ce", s, None, y, y, torch.tensor(1.0), 1.0, False, 0.0), F.cross_entropy(s, y))
    with pytest.raises(ValueError):
        total_loss("kl", s, None, y, y, lam, 1.0, False, 0.0)


def test_soft_targets_reach_the_loss(tmp_path):
    """The same images with other soft labels train a different student: the labels are the target."""
    a, _, _ = mtt_folder(tmp_path / "a")
    b, x, labels = mtt_folder(tmp_path / "b")
    torch.save(labels.flip(1), b / "labels_best.pt")
    cfgs = [resolve("mtt", overrides={"dataset": "digits", "distilled": str(p), "student": STUDENT, "epochs": 1,
                                      "eval_every": 1}) for p in (a, b)]
    r = [train(prepare(c, progress=False), 0, progress=False)[0] for c in cfgs]
    assert r[0].epochs[0]["loss"] != pytest.approx(r[1].epochs[0]["loss"], rel=1e-3)


def test_sgd_reset_at_decay_drops_momentum_only_at_the_decay(tmp_path):
    folder, _, _ = mtt_folder(tmp_path / "mtt")
    base = {"dataset": "digits", "distilled": str(folder), "student": STUDENT, "epochs": 3, "milestones": "2",
            "batch_size": 8, "eval_every": 3}
    runs = [train(prepare(resolve("mtt", overrides={**base, "sgd_reset_at_decay": str(v)}), progress=False), 0,
                  progress=False)[0] for v in (True, False)]
    losses = [[e["loss"] for e in r.epochs] for r in runs]
    assert losses[0][:2] == pytest.approx(losses[1][:2], rel=1e-6)  # identical until the decay
    assert losses[0][2] != pytest.approx(losses[1][2], rel=1e-6)  # the fresh SGD changes what follows
    assert [e["lr"] for e in runs[0].epochs] == pytest.approx([0.02, 0.02, 0.002])


def test_zca_whitens_training_and_validation_alike(tmp_path, monkeypatch):
    """--zca on a PNG-like (uint8) set: fitted on the real training split, applied to the training images
    before DSA and to every validation batch; a trained student is evaluated in the same space."""
    from rd3fast.engine.train import evaluate, training_images

    monkeypatch.setenv("RD3FAST_CACHE", str(tmp_path / "cache"))
    folder, _, _ = mtt_folder(tmp_path / "mtt")
    cfg = resolve("mtt", overrides={"dataset": "digits", "distilled": str(folder), "student": STUDENT, "zca": "true",
                                    "epochs": 1, "eval_every": 1})
    exp = prepare(cfg, progress=False)
    assert exp.zca is not None and exp.zca.matrix.shape == (3 * 16 * 16, 3 * 16 * 16)
    real = load_real("digits", "train")
    assert exp.cfg.mean == (0.0,) * 3 and exp.cfg.std == (1.0,) * 3  # ToTensor() pixels, as MTT under ZCA
    white = exp.zca(real.images.expand(-1, 3, -1, -1).float() / 255).flatten(1).double()
    cov = torch.cov(white.T)
    top = torch.linalg.eigvalsh(cov)[-20:]
    assert torch.all((top > 0.5) & (top < 1.05))  # the strong directions are whitened to ~unit variance
    # the float set is taken as stored (already in the whitened space it was distilled in)
    assert torch.equal(training_images(exp, exp.train), exp.train.images)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 10))
    got = evaluate(model, exp.val.images, exp.val.labels, exp.cfg.mean, exp.cfg.std, 100, whiten=exp.zca)
    manual = (model(exp.zca(exp.val.images.float() / 255)).argmax(1)
              == exp.val.labels).float().mean().item() * 100
    assert got["top1"] == pytest.approx(manual)
    result, _ = train(exp, 0, progress=False)
    assert any("ZCA" in n for n in result.notes)


@pytest.mark.gpu
def test_mtt_with_zca_and_dsa_on_cuda(tmp_path):
    """The coupled path on the GPU: DSA ops on CUDA equal the CPU spec, and an mtt run with ZCA trains
    (eagerly: DSA picks its op on the host)."""
    from rd3fast.engine.aug import AugSpec, dsa, sample_params

    spec = AugSpec(size=16, mean=DIGITS.mean, std=DIGITS.std, crop="none", flip_p=0.0, mix="none", aug="dsa")
    x = torch.randn(32, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):  # every family, most likely
        p = sample_params(spec, 32, 16, 16, g)
        assert torch.allclose(dsa(x.cuda(), p.to("cuda")).cpu(), dsa(x, p), atol=1e-5)
    folder, _, _ = mtt_folder(tmp_path / "mtt")
    cfg = resolve("mtt", overrides={"dataset": "digits", "distilled": str(folder), "student": STUDENT, "zca": "true",
                                    "epochs": 2, "eval_every": 2, "device": "cuda"})
    result, _ = train(prepare(cfg, progress=False), 0, progress=False)
    assert result.notes[0].startswith("eager step: DSA") and result.evals[-1]["top1"] is not None
    assert all(e["loss"] is not None for e in result.epochs)


def test_mtt_and_datm_presets_mirror_evaluate_synset():
    """MTT utils.py evaluate_synset: range(Epoch + 1) epochs, lr x0.1 once epoch Epoch // 2 + 1 = 501 is done."""
    from rd3fast.config import lr_factor

    mtt, datm = resolve("mtt"), resolve("datm")
    assert (mtt.epochs, mtt.batch_size, datm.batch_size) == (1001, 256, 128)
    assert (mtt.optimizer, mtt.momentum, mtt.weight_decay) == ("sgd", 0.9, 5e-4)
    assert mtt.aug == "dsa" and mtt.dsa_strategy == "color_crop_cutout_flip_scale_rotate" and mtt.mix == "none"
    assert mtt.label_source == "set" and mtt.lr_from_set and mtt.sgd_reset_at_decay and mtt.student == "convnet-d3"
    assert [lr_factor(mtt, e) for e in (0, 501, 502, 1000)] == pytest.approx([1, 1, 0.1, 0.1])
    assert mtt.eval_every == mtt.epochs  # tested once, after the last epoch
