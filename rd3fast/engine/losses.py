"""Post-evaluation losses between student logits and the teacher's soft labels (+ a hard-label term).

- kl: KLDivLoss(reduction="batchmean")(log_softmax(s / T), softmax(t / T)), as SRe2L/RDED; times T^2 with
  ``kl_t2`` (Hinton's scaling, which those scripts do not apply).
- soft_ce: cross-entropy against softmax(t / T): -sum softmax(t/T) * log_softmax(s/T), batch mean.
- mse_gt: EDC / G-VBSM: mean squared error between the logits, plus ``ce_weight`` x hard-label CE.
- ce: hard labels only (teacher pre-training, hard-label baselines).
With ``--label-source set`` the targets are the set's own soft labels (logits, as DATM/TESLA store them)
instead of a teacher's: "ce" is then DATM's SoftCrossEntropy, -sum softmax(label) * log_softmax(s) / B
(distill/evaluation.py), and under mixing each soft term is lam-weighted over the image's and its
partner's labels (``target_partner``), as mixed CE is for hard labels.
Any loss plus ``ce_weight`` > 0 is the "joint" loss of the RD3 study. The hard-label target is each
image's own label (``ce_target="label"``, what EDC/G-VBSM do even under CutMix) or the mixed target
lam * CE(s, y) + (1 - lam) * CE(s, y_partner) (``"mixed"``; always used by kind "ce").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_label_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                    t2: bool = False) -> torch.Tensor:
    s, t = student.float(), teacher.float()
    if kind == "kl":
        loss = F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
        return loss * temperature**2 if t2 else loss
    if kind == "soft_ce":
        return -(F.softmax(t / temperature, 1) * F.log_softmax(s / temperature, 1)).sum(1).mean()
    if kind == "mse_gt":
        return F.mse_loss(s, t)
    raise ValueError(f"unknown soft-label loss {kind!r}")


def mixed_ce(student: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    s = student.float()
    return lam * F.cross_entropy(s, y) + (1.0 - lam) * F.cross_entropy(s, y_partner)


def total_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor | None, y: torch.Tensor,
               y_partner: torch.Tensor, lam: torch.Tensor, temperature: float, t2: bool,
               ce_weight: float, ce_target: str = "label",
               target_partner: torch.Tensor | None = None) -> torch.Tensor:
    """The training objective of one step. ``teacher``: the soft targets (a teacher's logits, or the set's
    own labels); None trains on hard labels (kind 'ce'). ``target_partner``: the partners' soft targets
    when a mixed batch carries the set's labels."""
    if teacher is None:
        if kind != "ce":
            raise ValueError(f"loss {kind!r} needs soft targets")
        return mixed_ce(student, y, y_partner, lam)
    if kind == "ce":  # cross-entropy against soft targets at T = 1 (DATM's SoftCrossEntropy)
        kind, temperature, t2 = "soft_ce", 1.0, False
    loss = soft_label_loss(kind, student, teacher, temperature, t2)
    if target_partner is not None:
        loss = lam * loss + (1.0 - lam) * soft_label_loss(kind, student, target_partner, temperature, t2)
    if ce_weight > 0:
        hard = mixed_ce(student, y, y_partner, lam) if ce_target == "mixed" else F.cross_entropy(student.float(), y)
        loss = loss + ce_weight * hard
    return loss
