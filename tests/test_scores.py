"""DD-Ranking's scores (HLR, IOR, LRS, ARS): the arithmetic against DD-Ranking's own definitions, the runs the
sweep's [scores] table adds (and only those), and the scores a finished sweep reports."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rd3fast.bench import __main__ as bench
from rd3fast.bench import board as lb
from rd3fast.bench import render, scores, sweepfile
from rd3fast.bench.plan import build_plan
from rd3fast.data.sets import load_real
from rd3fast.errors import RD3Error
from tests.test_leaderboard import finished, make_root
from tests import test_sweep
from tests.test_sweep import toml_text, write_sweep

# The sweep tests' fixtures: digits subsets and a random-init teacher (inputs), copied per test (work), and
# the count of groups trained (counted).
inputs, work, counted = test_sweep.inputs, test_sweep.work, test_sweep.counted

# ---------------------------------------------------------------------------------------------------
# The arithmetic
# ---------------------------------------------------------------------------------------------------
# A worked example of DD-Ranking's compute_metrics (NUS-HPC-AI-Lab/DD-Ranking ddranking/metrics/soft_label.py,
# LabelRobustScoreSoft.compute_metrics): three evaluation rounds, accuracies in percent as its validate()
# returns them; full-data hard-label accuracy 90.0 (a REAL_DATA_ACC_CACHE-style number).
FULL = 90.0
SYN_HARD = {0: 60.0, 1: 62.0, 2: 61.0}
SYN_ANY = {0: 70.0, 1: 71.0, 2: 72.5}
RDM_ANY = {0: 65.0, 1: 66.0, 2: 66.5}
# per round: hlr = full - syn_hard = 30, 28, 29; ior = syn_any - rdm_any = 5, 5, 6.
# Its README / docs/introduction.md: alpha = w IOR - (1 - w) HLR, LRS = (e^alpha - e^-1) / (e - e^-1), "normalized
# to [0, 1]" (x 100 %), which needs accuracies as fractions. Round 0 by hand: alpha = 0.5 * 0.05 - 0.5 * 0.30 =
# -0.125; e^-0.125 = 0.8824969, e^-1 = 0.3678794, e - e^-1 = 2.3504024 -> (0.8824969 - 0.3678794) / 2.3504024 =
# 0.2189487 -> 21.895 %. Rounds 1, 2: alpha = -0.115 -> 22.272 %.
LRS_DOCS = [21.89487, 22.27222, 22.27222]
# Its released code computes `alpha = lrs_lambda * ior - (1 - lrs_lambda) * hlr` on the percent values and
# `lrs = (np.exp(alpha) - np.exp(-1)) / (np.exp(1) - np.exp(-1))` without x 100: round 0, alpha = -12.5 ->
# (3.727e-6 - 0.3678794) / 2.3504024 = -0.1565161.
LRS_CODE = [-0.1565161, -0.1565133, -0.1565133]


def test_lrs_matches_dd_rankings_documented_formula_and_its_code():
    per = scores.per_seed_scores(SYN_ANY, RDM_ANY, SYN_HARD, FULL)
    assert per["hlr"] == {0: 30.0, 1: 28.0, 2: 29.0} and per["ior"] == {0: 5.0, 1: 5.0, 2: 6.0}
    assert [per["lrs"][s] for s in range(3)] == pytest.approx(LRS_DOCS, abs=1e-4)
    code = scores.per_seed_scores(SYN_ANY, RDM_ANY, SYN_HARD, FULL, units="percent")
    assert [code["lrs"][s] for s in range(3)] == pytest.approx(LRS_CODE, abs=1e-6)
    # DD-Ranking's *_mean / *_std: np.mean / np.std over the rounds
    e = scores.estimate(per["lrs"])
    assert e.mean == pytest.approx(np.mean(LRS_DOCS), abs=1e-4)
    assert e.population_std == pytest.approx(np.std(LRS_DOCS), abs=1e-4) == pytest.approx(0.17788, abs=1e-4)
    assert e.std == pytest.approx(np.std(LRS_DOCS, ddof=1), abs=1e-4)
    assert e.interval.lo <= e.mean <= e.interval.hi and e.interval.n == 3


def test_ars_weights_the_two_gains_and_normalizes_alike():
    # DD-Ranking ddranking/metrics/aug_robust.py compute_metrics: beta = ars_lambda * with_aug_score + (1 -
    # ars_lambda) * without_aug_score, normalized as LRS. Gains: with augmentation 5, 5, 6; without 2, 3, 1.
    # Round 0 by hand: beta = 0.5 * 0.05 + 0.5 * 0.02 = 0.035; e^0.035 = 1.0356197 -> 0.2840961 -> 28.410 %.
    syn_naug, rdm_naug = {0: 50.0, 1: 52.0, 2: 51.0}, {0: 48.0, 1: 49.0, 2: 50.0}
    per = scores.per_seed_scores(SYN_ANY, RDM_ANY, syn_naug=syn_naug, rdm_naug=rdm_naug)
    assert per["naug_gain"] == {0: 2.0, 1: 3.0, 2: 1.0}
    assert [per["ars"][s] for s in range(3)] == pytest.approx([28.40961, 28.63047, 28.40961], abs=1e-4)
    assert per["lrs"] == {} and per["hlr"] == {}  # no hard-label runs: no LRS, never a guessed one
    # gamma = 1: only the augmented gain counts
    one = scores.per_seed_scores(SYN_ANY, RDM_ANY, syn_naug=syn_naug, rdm_naug=rdm_naug, ars_weight=1.0)
    assert one["ars"][0] == pytest.approx(scores.normalize(0.05))


def test_normalization_maps_minus_one_to_one_onto_0_to_100():
    assert scores.normalize(-1.0) == pytest.approx(0.0, abs=1e-12)
    assert scores.normalize(1.0) == pytest.approx(100.0)
    assert scores.normalize(0.0) == pytest.approx(100 * (1 - math.exp(-1)) / (math.e - math.exp(-1)))
    assert scores.lrs(hlr=0.0, ior=0.0) == pytest.approx(26.894, abs=1e-3)


def test_scores_pair_by_seed_and_use_only_seeds_every_input_has():
    per = scores.per_seed_scores({0: 70.0, 1: 71.0, 2: 72.0}, {0: 60.0, 2: 61.0}, {0: 50.0, 1: 51.0, 2: 52.0},
                                 {0: 90.0, 1: 91.0})
    assert per["ior"] == {0: 10.0, 2: 11.0}  # seed 1 has no random-real run
    assert per["hlr"] == {0: 40.0, 1: 40.0}  # seed 2 has no real-hard run
    assert set(per["lrs"]) == {0}


# ---------------------------------------------------------------------------------------------------
# The [scores] table and the runs it adds
# ---------------------------------------------------------------------------------------------------
SCORES = "[scores]\nlrs = true\nars = true\n[scores.real]\nepochs = 1\n"


@pytest.mark.parametrize("table, message", [
    ("[scores]\nlrs = true\nwhat = 1\n", "unknown key 'what' in [scores]"),
    ("[scores]\nlrs = true\nlrs_weight = 1.5\n", "[scores] lrs_weight = 1.5: expected a number in [0, 1]"),
    ("[scores]\nlrs = true\nprotocol = \"rd3\"\n", "[scores] protocol = 'rd3' is not a protocol of this sweep"),
    ("[scores]\nars = true\nnaug = \"some\"\n", "[scores] naug = 'some'"),
    ("[scores]\nlrs = true\nunits = \"ratio\"\n", "[scores] units = 'ratio'"),
    ("[scores]\nlrs = true\nreal_hard = 150\n", "[scores] real_hard = 150: expected the real-hard top-1 in percent"),
    ("[scores]\nlrs = true\nreal_hard = 50.0\n[scores.real]\nepochs = 1\n", "[scores.real] configures the real-hard"),
    ("[scores]\nlrs = true\n[scores.real]\nepoch = 1\n", "unknown key 'epoch' in [scores.real]"),
    ("[scores]\nlrs = \"yes\"\n", "[scores] lrs = 'yes': expected a bool"),
])
def test_scores_table_errors_name_the_key(work, table, message):
    with pytest.raises(RD3Error) as e:
        sweepfile.load_sweep(write_sweep(work, toml_text() + table))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_scores_need_a_baseline_and_a_training_split(work):
    with pytest.raises(RD3Error, match="needs a random-real baseline"):
        sweepfile.load_sweep(write_sweep(work, toml_text(sets=("other",)) + SCORES))
    val = toml_text().replace('dataset = "digits"', f'val = "{work / "syn" / "random"}"')
    with pytest.raises(RD3Error, match="give real_hard = <top-1 %>"):
        sweepfile.load_sweep(write_sweep(work, val + "[scores]\nlrs = true\n"))
    sweepfile.load_sweep(write_sweep(work, val + "[scores]\nlrs = true\nreal_hard = 56.5\n"))  # a number will do


def roles(plan):
    out = {}
    for r in plan.runs:
        out.setdefault(r.role, []).append(r)
    return out


def test_the_planner_adds_the_runs_the_scores_need_and_nothing_else(work):
    # 2 sets x 2 protocols x 2 seeds = 8 table runs. lrs: the hard-label runs of every set under one protocol
    # (2 x 2) and the real-hard reference (2 seeds); ars: a no-augmentation variant of every table run (8).
    plain = build_plan(sweepfile.load_sweep(write_sweep(work, toml_text())), progress=False)
    sw = sweepfile.load_sweep(write_sweep(work, toml_text() + SCORES))
    plan = build_plan(sw, progress=False)
    by = roles(plan)
    assert {r.id for r in by[""]} == {r.id for r in plain.runs}  # the table's runs are untouched
    assert len(by["hard"]) == 4 and len(by["real"]) == 2 and len(by["naug"]) == 8
    assert len(plan.runs) == sweepfile.count_runs(sw) == 22
    assert {r.protocol for r in by["hard"]} == {"rd3-small"}  # the first protocol that is not `own`
    for r in by["hard"]:
        c = r.config
        assert c.loss == "ce" and c.teacher == () and c.mix == "none" and c.crop == "rrc" and r.teachers == ()
        assert c.label_source == "teacher" and c.ce_weight == 0.0
    for r in by["naug"]:
        c = r.config
        assert (c.crop, c.flip_p, c.mix, c.patch_shuffle) == ("none", 0.0, "none", 1) and c.loss == "kl"
    for r in by["real"]:
        assert r.config.preset == "pretrain" and r.config.epochs == 1 and r.config.distilled is None
        assert r.set.method == "real" and r.heldout is None and r.images == len(load_real("digits", "train").images)
    # random-real's own protocol is rd3-small: its naug runs are shared, as its table runs are
    naug_ids = [r.id for r in by["naug"]]
    assert len(set(naug_ids)) == 6
    again = build_plan(sweepfile.load_sweep(write_sweep(work, toml_text() + SCORES)), progress=False)
    assert [r.id for r in again.runs] == [r.id for r in plan.runs]  # ids are stable

    lrs_only = build_plan(sweepfile.load_sweep(write_sweep(work, toml_text() + "[scores]\nlrs = true\nreal_hard = "
                                                                                 "91.0\nuse_aug_for_hard = true\n")),
                          progress=False)
    by = roles(lrs_only)
    assert set(by) == {"", "hard"} and all(r.config.mix == "cutmix" for r in by["hard"])  # no real runs: a number
    mix = build_plan(sweepfile.load_sweep(write_sweep(work, toml_text() + "[scores]\nars = true\nnaug = \"mix\"\n")),
                     progress=False)
    assert set(roles(mix)) == {"", "naug"}
    assert all(r.config.mix == "none" and r.config.crop == "rrc" for r in roles(mix)["naug"])


def test_a_sweep_with_scores_reports_them_from_its_runs(work, counted):
    grid = "[grid]\nlr = [1e-3, 2e-3]\n[select]\nsize = 50\n"
    path, root = write_sweep(work, toml_text(protocols="[protocols.rd3-small]\n", grid=grid) + SCORES), work / "out"
    assert bench.main([str(path), "--no-progress", "--parallel-seeds", "2"]) == 0
    board = lb.load(root)
    assert len(board.runs) == 8 and len(board.extra) == 8 + 8 + 2
    assert all(r.status == "ok" for r in board.runs + board.extra)
    sc = scores.settings(board)
    row = next(r for r in board.rows if r[1] == "other")
    got = scores.row_scores(board, row, "rd3-small", sc)

    def last(role, set_name, chosen_lr=None):
        """Seed -> last top-1 of a role's runs of a set, at the lr the held-out split chose for that cell."""
        runs = [r for r in board.runs + board.extra if r.role == role and r.set == set_name and r.status == "ok"]
        if chosen_lr is None and role != "real":
            held = {lr: np.mean([r.last_heldout_top1 for r in runs if r.grid["lr"] == lr]) for lr in (1e-3, 2e-3)}
            chosen_lr = max(held, key=held.get)
        return {r.seed: r.last_top1 for r in runs if role == "real" or r.grid["lr"] == chosen_lr}

    syn, rdm, hard, real = last("", "other"), last("", "random"), last("hard", "other"), last("real", "digits (train)")
    naug, rdm_naug = last("naug", "other"), last("naug", "random")
    for s in (0, 1):
        hlr, ior = real[s] - hard[s], syn[s] - rdm[s]
        alpha = 0.5 * ior / 100 - 0.5 * hlr / 100
        assert got.hlr.per_seed[s] == pytest.approx(hlr) and got.ior.per_seed[s] == pytest.approx(ior)
        assert got.lrs.per_seed[s] == pytest.approx(100 * (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
        beta = 0.5 * ior / 100 + 0.5 * (naug[s] - rdm_naug[s]) / 100
        assert got.ars.per_seed[s] == pytest.approx(100 * (math.exp(beta) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert got.final and got.lrs.mean == pytest.approx(np.mean([got.lrs.per_seed[s] for s in (0, 1)]))
    md = (root / "leaderboard.md").read_text()
    assert "### DD-Ranking's scores" in md and f"{got.lrs.mean:.2f} ± {got.lrs.std:.2f}" in md
    assert f"{got.ars.mean:.2f} ± {got.ars.std:.2f}" in md and "Real-hard reference" in md
    assert "Rank groups by score" in md and "| LRS | rd3-small | " in md and "| ARS | rd3-small | " in md
    csv_roles = {line.split(",")[6] for line in (root / "leaderboard.csv").read_text().splitlines()[1:]}
    assert csv_roles == {"", "hard", "naug", "real"}

    counted.clear()  # a rerun recomputes nothing
    assert bench.main([str(path), "--no-progress", "--parallel-seeds", "2"]) == 0
    assert counted == []


def test_scores_of_unfinished_runs_are_marked_and_missing_inputs_give_none(tmp_path):
    # A hand-built ROOT: the table's runs finished, the hard-label runs of `other` not yet.
    runs = (finished("random", "random-real", 10, "P", [30.0, 31.0]) + finished("other", "rded", 10, "P", [40.0, 43.0]))
    hard = finished("other", "rded", 10, "P", [20.0])
    for i, _ in hard:
        i["role"] = "hard"
    pending = finished("other", "rded", 10, "P", [0.0])[0][0]
    pending.update(role="hard", seed=1)
    root = make_root(tmp_path / "root", runs + hard + [(pending, None)])
    plan = json.loads((root / "plan.json").read_text())
    plan["scores"] = {"lrs": True, "ars": False, "lrs_weight": 0.5, "protocol": "P", "real_hard": 80.0}
    (root / "plan.json").write_text(json.dumps(plan))
    board = lb.load(root)
    row = next(r for r in board.rows if r[1] == "other")
    got = scores.row_scores(board, row, "P", scores.settings(board))
    assert got.hlr.per_seed == {0: 60.0} and not got.final and got.ars is None
    assert got.lrs.per_seed[0] == pytest.approx(scores.lrs(60.0, 10.0))
    md = render.render_markdown(board)
    assert "80.0 (given in the sweep)" in md and "+60.0 (n=1) *" in md


def test_a_sweep_may_have_no_teacher_when_no_protocol_needs_one(work):
    # hard labels only (DD-Ranking's LabelRobustScoreHard): no [[teachers]] at all
    text = toml_text(protocols='[protocols.ce]\npreset = "rd3-small"\nloss = "ce"\nmix = "none"\n')
    text = text.replace('[[teachers]]\narch = "convnet-d2-w8"\nweights = "teacher.pt"\n', "")
    assert "[[teachers]]" not in text
    plan = build_plan(sweepfile.load_sweep(write_sweep(work, text + "[scores]\nlrs = true\nreal_hard = 90.0\n")),
                      progress=False)
    hard = [r for r in plan.runs if r.role == "hard"]
    table = [r for r in plan.runs if not r.role]
    assert all(r.config.teacher == () and r.teachers == () for r in plan.runs)
    assert {r.id for r in hard} == {r.id for r in table}  # CE without mixing: the hard runs are the table's
    with pytest.raises(RD3Error, match="needs at least one teacher.*add a \\[\\[teachers\\]\\] table"):
        build_plan(sweepfile.load_sweep(write_sweep(work, text.replace('loss = "ce"\n', ""))), progress=False)
