"""Coreset baselines (rd3fast.methods.coreset): herding and k-center greedy on teacher features."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

from rd3fast.data.pixels import normalize
from rd3fast.data.sets import BUILTIN, ImageSet, load_real
from rd3fast.engine.models import build_model
from rd3fast.engine.teacher import Relabeler
from rd3fast.errors import RD3Error
from rd3fast.methods.coreset import (
    coreset_indices,
    coreset_select,
    final_linear,
    herding,
    kcenter_greedy,
    teacher_features,
)

MEAN, STD = BUILTIN["digits"].mean, BUILTIN["digits"].std


def pts(*xy: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(xy, dtype=torch.float32)


def covering_radius(x: torch.Tensor, centers: torch.Tensor) -> float:
    """Largest distance from a point to its nearest center."""
    return float(torch.cdist(x.double(), x[centers].double()).min(1).values.max())


# ---------------------------------------------------------------------------------------------------
# herding
# ---------------------------------------------------------------------------------------------------
def test_herding_hand_worked() -> None:
    x = pts((0, 0), (1, 0), (2, 0), (9, 0), (3, 3), (0, 3))
    # mu = (15/6, 6/6) = (2.5, 1). Step i picks argmin over unselected x of |t - x|^2, t = (i+1)*mu - sum(sel).
    # i=0: t = (2.5, 1):  x0 6.25+1=7.25, x1 2.25+1=3.25, x2 .25+1=1.25, x3 42.25+1=43.25,
    #                     x4 .25+4=4.25, x5 6.25+4=10.25                        -> x2, sum (2, 0)
    # i=1: t = (5, 2)-(2, 0) = (3, 2):  x0 9+4=13, x1 4+4=8, x3 36+4=40, x4 0+1=1, x5 9+1=10
    #                                                                           -> x4, sum (5, 3)
    # i=2: t = (7.5, 3)-(5, 3) = (2.5, 0):  x0 6.25, x1 2.25, x3 42.25, x5 6.25+9=15.25
    #                                                                           -> x1, sum (6, 3)
    # i=3: t = (10, 4)-(6, 3) = (4, 1):  x0 16+1=17, x3 25+1=26, x5 16+4=20     -> x0, sum (6, 3)
    # i=4: t = (12.5, 5)-(6, 3) = (6.5, 2):  x3 6.25+4=10.25, x5 42.25+1=43.25  -> x3 (the outlier!)
    # i=5: only x5 is left                                                       -> x5
    # Plain "nearest to the mean" order would be 2, 1, 4, 0, 5, 3: herding differs at steps 1 and 4.
    # (DeepCore's argmax would start with x3, the point farthest from the mean.)
    got = herding(x, 6)
    assert got.dtype == torch.int64
    assert got.tolist() == [2, 4, 1, 0, 3, 5]
    assert herding(x, 3).tolist() == [2, 4, 1]  # a prefix: greedy, k only stops it early
    assert herding(x, 0).tolist() == []


def test_herding_ties_go_to_the_lowest_index() -> None:
    x = pts((0, 0), (4, 0), (0, 4), (4, 4), (2, 2))
    # mu = (2, 2). i=0: t=(2,2): x4 at 0                                 -> x4, sum (2, 2)
    # i=1: t = (4,4)-(2,2) = (2,2): x0..x3 all at 4+4=8, a four-way tie -> x0, sum (2, 2)
    # i=2: t = (6,6)-(2,2) = (4,4): x3 at 0                              -> x3, sum (6, 6)
    # i=3: t = (8,8)-(6,6) = (2,2): x1, x2 both at 8                     -> x1
    assert herding(x, 5).tolist() == [4, 0, 3, 1, 2]


def test_herding_mean_matches_better_than_random() -> None:
    # What herding is for: its k-subset mean tracks the full mean far closer than random subsets do.
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    sel = herding(x, 10)
    assert len(set(sel.tolist())) == 10
    gap = (x[sel].mean(0) - x.mean(0)).norm()
    g = torch.Generator().manual_seed(1)
    rand_gaps = torch.stack([(x[torch.randperm(200, generator=g)[:10]].mean(0) - x.mean(0)).norm()
                             for _ in range(50)])
    assert gap < rand_gaps.min()


# ---------------------------------------------------------------------------------------------------
# k-center greedy
# ---------------------------------------------------------------------------------------------------
def test_kcenter_hand_worked_on_a_line() -> None:
    x = pts((0,), (1,), (2,), (6,), (10,), (11,))
    # first = x0 (0). Distance to the nearest center:
    #   {0}:        x1 1, x2 2, x3 6, x4 10, x5 11          -> x5 (11)
    #   {0,11}:     x1 1, x2 2, x3 min(6,5)=5, x4 min(10,1)=1 -> x3 (6)
    #   {0,11,6}:   x1 1, x2 min(2,4)=2, x4 1               -> x2 (2)
    #   {0,11,6,2}: x1 min(1,1)=1, x4 1: tie                -> x1 (lowest index), then x4
    got = kcenter_greedy(x, 6, first=0)
    assert got.dtype == torch.int64
    assert got.tolist() == [0, 5, 3, 2, 1, 4]
    assert kcenter_greedy(x, 1, first=3).tolist() == [3]


def test_kcenter_hand_worked_in_2d() -> None:
    x = pts((0, 0), (3, 0), (0, 4), (3, 4), (1, 1))
    # first = x4 (1,1). Squared distance to the nearest center:
    #   {x4}:       x0 1+1=2, x1 4+1=5, x2 1+9=10, x3 4+9=13             -> x3
    #   {x4,x3}:    x0 min(2,25)=2, x1 min(5,16)=5, x2 min(10,9)=9        -> x2
    #   {.., x2}:   x0 min(2,16)=2, x1 min(5,9+16)=5                      -> x1, then x0
    assert kcenter_greedy(x, 5, first=4).tolist() == [4, 3, 2, 1, 0]


def test_kcenter_never_repicks_a_center_with_duplicates() -> None:
    x = pts((0, 0), (0, 0), (0, 0), (5, 0))
    # After x0 and x3 every remaining point sits on a center (distance 0): the lowest unselected one.
    assert kcenter_greedy(x, 4, first=0).tolist() == [0, 3, 1, 2]


def brute_force_kcenter(x: torch.Tensor, k: int) -> float:
    """Optimal covering radius with k centers chosen among the points."""
    return min(covering_radius(x, torch.tensor(c)) for c in itertools.combinations(range(len(x)), k))


def test_kcenter_covers_the_set() -> None:
    # Three tight pairs far apart: greedy takes one point of each pair with 3 centers, which is optimal.
    # Pair gaps 1, 2, 1.5, so the best radius with 3 centers is 2 (whichever point of the (10,*) pair).
    x = pts((0, 0), (0, 1), (10, 0), (10, 2), (0, 10), (1.5, 10))
    radii = [covering_radius(x, kcenter_greedy(x, k, first=0)) for k in range(1, 7)]
    assert all(a >= b for a, b in zip(radii, radii[1:]))
    assert radii[2] == pytest.approx(2.0) == pytest.approx(brute_force_kcenter(x, 3))
    assert radii[-1] == 0.0
    # Random points: radius non-increasing in k, prefixes consistent, within the 2-approximation bound.
    y = torch.rand(10, 2, generator=torch.Generator().manual_seed(3))
    full = kcenter_greedy(y, 10, first=7)
    assert sorted(full.tolist()) == list(range(10))
    prev = float("inf")
    for k in range(1, 5):
        sel = kcenter_greedy(y, k, first=7)
        assert sel.tolist() == full[:k].tolist()
        r = covering_radius(y, sel)
        assert r <= prev
        assert brute_force_kcenter(y, k) - 1e-9 <= r <= 2 * brute_force_kcenter(y, k) + 1e-9
        prev = r


def test_selection_functions_reject_bad_k() -> None:
    x = pts((0, 0), (1, 1))
    with pytest.raises(ValueError, match="k=3 of 2"):
        herding(x, 3)
    with pytest.raises(ValueError, match="k=3 of 2"):
        kcenter_greedy(x, 3, first=0)
    with pytest.raises(ValueError, match="first=2"):
        kcenter_greedy(x, 1, first=2)


# ---------------------------------------------------------------------------------------------------
# teacher features
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return load_real("digits", "train")


@pytest.fixture(scope="module")
def teacher() -> Relabeler:
    torch.manual_seed(0)
    return Relabeler([build_model("convnet-d3-w8", 10, 16)])


def test_features_are_the_classifier_input(digits: ImageSet, teacher: Relabeler) -> None:
    model = teacher.teachers[0]
    assert final_linear(model)[0] == "classifier"
    imgs = digits.images[:20]
    feats = teacher_features(teacher, imgs, MEAN, STD, batch_size=7)  # batches of 7, 7, 6
    with torch.inference_mode():
        x = normalize(imgs.float(), MEAN, STD).expand(-1, 3, -1, -1)  # 1-channel digits -> 3, as rded_select
        want = torch.flatten(model.features(x), 1)
    assert feats.shape == (20, 8 * 2 * 2)
    torch.testing.assert_close(feats, want)


def test_features_in_eval_mode_and_state_restored() -> None:
    torch.manual_seed(1)
    model = build_model("convnet-d3-w8-bn", 10, 16)
    with torch.no_grad():  # non-trivial running statistics, so train-mode BN would give other features
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    relabeler = Relabeler([model], bn_train=True)  # SRe2L-CIFAR teachers stay in train mode
    assert model.training
    imgs = torch.randint(0, 256, (9, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    one = teacher_features(relabeler, imgs, MEAN, STD, batch_size=1)
    all_ = teacher_features(relabeler, imgs, MEAN, STD, batch_size=256)
    torch.testing.assert_close(one, all_)  # batch-independent: BatchNorm ran on its running statistics
    assert model.training  # the caller's mode is given back


def test_features_of_a_torchvision_resnet() -> None:
    model = build_model("resnet18-cifar", 10, 16)
    assert final_linear(model)[0] == "fc"
    imgs = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    assert teacher_features(Relabeler([model]), imgs, MEAN, STD).shape == (2, 512)


def test_teacher_without_a_final_linear_is_an_error() -> None:
    conv_only = nn.Sequential(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(RD3Error, match="no nn.Linear"):
        teacher_features(Relabeler([conv_only]), torch.zeros(1, 3, 8, 8, dtype=torch.uint8), MEAN, STD)

    class AuxLast(nn.Module):  # the last registered Linear is a side branch, not the classifier
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(3, 10)
            self.aux = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = x.mean((2, 3))
            self.aux(f)
            return self.head(f)

    with pytest.raises(RD3Error, match="'aux'.*not the final classifier"):
        teacher_features(Relabeler([AuxLast()]), torch.zeros(1, 3, 8, 8, dtype=torch.uint8), MEAN, STD)


# ---------------------------------------------------------------------------------------------------
# coreset_select end to end
# ---------------------------------------------------------------------------------------------------
def test_coreset_select_on_digits(digits: ImageSet, teacher: Relabeler) -> None:
    ipc = 5
    run = {}
    for method, seed in [("herding", 0), ("herding", 1), ("kcenter", 0), ("kcenter", 1)]:
        run[method, seed] = coreset_indices(digits, teacher, ipc, MEAN, STD, method=method, seed=seed,
                                            progress=False)
    for method in ("herding", "kcenter"):
        syn = coreset_select(digits, teacher, ipc, MEAN, STD, method=method, seed=0, progress=False)
        sel = run[method, 0]
        assert syn.source == f"{method}-ipc{ipc}"
        assert syn.classes == digits.classes
        assert syn.images.dtype == torch.uint8 and syn.images.shape == (10 * ipc, 1, 16, 16)
        assert syn.labels.tolist() == [c for c in range(10) for _ in range(ipc)]  # class order
        assert torch.equal(syn.images, digits.images[sel])  # exact copies of the chosen training images
        assert torch.equal(digits.labels[sel], syn.labels)
        for c in range(10):
            assert len(set(sel[c * ipc:(c + 1) * ipc].tolist())) == ipc  # without replacement
        again = coreset_select(digits, teacher, ipc, MEAN, STD, method=method, seed=0, progress=False)
        assert torch.equal(again.images, syn.images)  # same seed, same images
    # Herding draws nothing: the seed does not matter. k-center's seed draws the first center per class.
    assert torch.equal(run["herding", 0], run["herding", 1])
    firsts = [run["kcenter", s][::ipc] for s in (0, 1)]
    assert not torch.equal(*firsts)
    # Within a class the indices are the pure functions' selection order on the class's features.
    c = 3
    members = torch.nonzero(digits.labels == c).flatten()
    feats = teacher_features(teacher, digits.images[members], MEAN, STD)
    assert run["herding", 0][c * ipc:(c + 1) * ipc].tolist() == members[herding(feats, ipc)].tolist()
    first = int((members == run["kcenter", 0][c * ipc]).nonzero())
    assert run["kcenter", 0][c * ipc:(c + 1) * ipc].tolist() == members[kcenter_greedy(feats, ipc, first)].tolist()


class Untouchable(nn.Module):
    """A teacher that must not be run: bad input is refused before any teacher pass."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the teacher ran")


def test_bad_input(digits: ImageSet) -> None:
    teacher = Relabeler([Untouchable()])
    smallest = int(torch.bincount(digits.labels).min())  # class 8: 122 images in the train split
    name = digits.classes[int(torch.bincount(digits.labels).argmin())]
    for method in ("herding", "kcenter"):
        with pytest.raises(RD3Error, match=rf"--ipc {smallest + 1}: class '{name}' .* has only {smallest} images"):
            coreset_select(digits, teacher, smallest + 1, MEAN, STD, method=method, progress=False)
    with pytest.raises(RD3Error, match="'kmeans': expected one of herding, kcenter"):
        coreset_select(digits, teacher, 1, MEAN, STD, method="kmeans", progress=False)
    with pytest.raises(RD3Error, match="--ipc 0"):
        coreset_select(digits, teacher, 0, MEAN, STD, method="herding", progress=False)


def test_non_finite_features_are_an_error():
    """NaN features would make herding / k-center pick by NaN comparisons: an error instead."""
    model = build_model("convnet-d1-w4", 10, 16)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(RD3Error, match="features are NaN/inf"):
        teacher_features(model, torch.zeros(4, 1, 16, 16, dtype=torch.uint8), (0.5,), (0.5,))
