"""Losses against closed forms."""
import math

import torch
import torch.nn.functional as F

from rd3fast.engine.losses import mixed_ce, soft_label_loss, total_loss


def test_kl_closed_form_and_t2():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.0, 3.0, 1.0]])
    T = 2.0
    p = torch.softmax(t / T, 1)
    q = torch.softmax(s / T, 1)
    expected = float((p * (p.log() - q.log())).sum())
    assert math.isclose(float(soft_label_loss("kl", s, t, T)), expected, rel_tol=1e-5)
    assert math.isclose(float(soft_label_loss("kl", s, t, T, t2=True)), expected * T * T, rel_tol=1e-5)
    assert float(soft_label_loss("kl", t, t, T)) < 1e-7  # zero at equality


def test_kl_is_batchmean():
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    one = torch.stack([soft_label_loss("kl", s[i:i + 1], t[i:i + 1], 3.0) for i in range(8)])
    assert torch.allclose(soft_label_loss("kl", s, t, 3.0), one.mean(), atol=1e-6)


def test_soft_ce_is_kl_plus_entropy():
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    p = torch.softmax(t / 4, 1)
    entropy = -(p * p.log()).sum(1).mean()
    assert torch.allclose(soft_label_loss("soft_ce", s, t, 4.0), soft_label_loss("kl", s, t, 4.0) + entropy, atol=1e-5)


def test_mse_gt_and_joint():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    y, yp = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])
    lam = torch.tensor(0.7)
    mse = ((s - t) ** 2).mean()
    got = total_loss("mse_gt", s, t, y, yp, lam, 20.0, False, 0.025, "label")
    assert torch.allclose(got, mse + 0.025 * F.cross_entropy(s, y), atol=1e-6)
    mixed = total_loss("kl", s, t, y, yp, lam, 20.0, False, 0.5, "mixed")
    ce_mix = 0.7 * F.cross_entropy(s, y) + 0.3 * F.cross_entropy(s, yp)
    assert torch.allclose(mixed, soft_label_loss("kl", s, t, 20.0) + 0.5 * ce_mix, atol=1e-6)
    assert torch.allclose(total_loss("kl", s, t, y, yp, lam, 20.0, False, 0.0), soft_label_loss("kl", s, t, 20.0))


def test_hard_ce_follows_mixing():
    s = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    assert torch.allclose(mixed_ce(s, y, y, torch.tensor(0.3)), F.cross_entropy(s, y), atol=1e-6)
    assert torch.allclose(total_loss("ce", s, None, y, y.flip(0), torch.tensor(1.0), 1, False, 0), F.cross_entropy(s, y))
