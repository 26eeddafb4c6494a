"""The leaderboard's uncertainty (rd3fast.bench.inference, scipy.stats), checked against hand-worked numbers,
and the rank groups and flips it gives a board (rd3fast.bench.stats)."""
from __future__ import annotations

import pytest
from test_leaderboard import finished, make_root

from rd3fast.bench import board as lb
from rd3fast.bench import render
from rd3fast.bench import stats as board_stats
from rd3fast.bench.inference import (bootstrap_interval, difference_interval, difference_pvalue, holm,
                                     kendall_tau_b, mean_interval, rank_groups, seeds_needed)


def test_mean_interval_student_t() -> None:
    iv = mean_interval([40.0, 42.0, 44.0])  # 42 ± 4.303 * 2 / sqrt(3)
    assert (iv.value, iv.n) == (42.0, 3) and iv.lo == pytest.approx(37.032, abs=1e-3)
    assert iv.hi == pytest.approx(46.968, abs=1e-3)
    one = mean_interval([40.0])
    assert one.lo is None and one.hi is None and one.half is None  # one seed: no interval, never a fake one


def test_difference_is_paired_over_shared_seeds() -> None:
    a, b = {0: 10.0, 1: 12.0, 2: 14.0}, {0: 9.0, 1: 10.0, 2: 13.0}
    iv = difference_interval(a, b)  # differences 1, 2, 1: mean 4/3, sd 0.577, sem 1/3, t(0.975, 2) = 4.303
    assert iv.value == pytest.approx(4 / 3) and iv.lo == pytest.approx(4 / 3 - 4.3027 / 3, abs=1e-3)
    unpaired = difference_interval(a, {7: 9.0, 8: 10.0, 9: 13.0})  # no shared seed: Welch, wider
    assert unpaired.value == pytest.approx(4 / 3) and unpaired.lo < iv.lo
    # ttest_rel: t = 4 on 2 dof, two-sided p = 1 - t / sqrt(2 + t^2) = 0.0572
    assert difference_pvalue(a, b) == pytest.approx(1 - 4 / 18 ** 0.5, abs=1e-6)


def test_holm_step_down() -> None:
    assert holm([0.01, 0.04, 0.03]) == [True, False, False]  # 0.01 <= .05/3; 0.03 > .05/2 stops
    assert holm([0.01, 0.02, 0.04]) == [True, True, True]  # .0167, .025, .05
    assert holm([]) == []


def test_rank_groups_letters() -> None:
    separated = {frozenset(("a", "c"))}
    letters = rank_groups(["a", "b", "c"], lambda x, y: frozenset((x, y)) in separated)
    assert letters == {"a": "a", "b": "ab", "c": "b"}
    assert rank_groups(["a", "b"], lambda x, y: True) == {"a": "a", "b": "b"}
    assert rank_groups(["a", "b"], lambda x, y: False) == {"a": "a", "b": "a"}


def test_seeds_needed_and_tau_and_bootstrap() -> None:
    a, b = {0: 10.0, 1: 12.0, 2: 14.0}, {0: 9.0, 1: 10.0, 2: 13.0}
    assert seeds_needed(a, b) == 3  # ((1.96 + 0.842) * 0.577 / 1.333)^2 = 1.47 -> 2, + 1
    assert seeds_needed({0: 1.0}, {0: 2.0}) is None
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0) and kendall_tau_b([1, 1], [1, 2]) is None
    spread = bootstrap_interval([[40.0, 41.0, 42.0], [30.0, 31.0, 32.0]], lambda m: max(m) - min(m))
    assert spread.value == pytest.approx(10.0) and spread.lo <= 10.0 <= spread.hi
    assert spread == bootstrap_interval([[40.0, 41.0, 42.0], [30.0, 31.0, 32.0]], lambda m: max(m) - min(m))


def test_board_ranking_ties_and_flips(tmp_path) -> None:
    """Three methods under two protocols: under A, `big` is far above two close ones (shared letter); under
    B the close pair swaps: the flip is counted, and not as separated."""
    runs = (finished("big", "rded", 10, "A", [60.0, 61.0, 62.0]) + finished("x", "sre2l", 10, "A", [40.0, 41.5, 42.0])
            + finished("y", "cda", 10, "A", [40.5, 41.0, 41.8])
            + finished("big", "rded", 10, "B", [60.0, 61.0, 62.0]) + finished("x", "sre2l", 10, "B", [40.5, 41.0, 41.8])
            + finished("y", "cda", 10, "B", [40.0, 41.5, 42.2]))
    board = lb.load(make_root(tmp_path, runs))
    (view,) = board_stats.views(board)
    r = board_stats.ranking(board, view, "A")
    assert r.order[0] == "big" and r.letters["big"] != r.letters["x"] and set(r.letters["x"]) & set(r.letters["y"])
    close = [q for q in r.pairs if not q.separated]
    assert len(close) == 1 and close[0].seeds_needed is not None and close[0].seeds_needed > 3
    assert board_stats.flips(board, view, "A", "B") == (3, 1, 0)
    text = render.render_markdown(board)
    assert "### Rank groups" in text and "seeds needed" in text


def test_a_difference_too_small_to_chase_is_not_given_a_seed_count(tmp_path) -> None:
    # differences 0.1, -0.1, 0.05 (mean 0.0167, sd 0.104): ((1.96 + 0.842) * 0.104 / 0.0167)^2 ≈ 306,
    # + 1 -> 307 seeds; scaled so the means differ by 0.002 the count runs into the tens of thousands.
    runs = (finished("x", "sre2l", 10, "A", [40.0, 41.0, 42.0]) + finished("y", "cda", 10, "A", [40.1, 40.9, 42.05]))
    board = lb.load(make_root(tmp_path / "a", runs))
    (view,) = board_stats.views(board)
    (pair,) = board_stats.ranking(board, view, "A").pairs
    assert 200 < pair.seeds_needed <= render.SEEDS_SHOWN and f"| {pair.seeds_needed} |" in render.render_markdown(board)
    runs = (finished("x", "sre2l", 10, "A", [40.0, 41.0, 42.0]) + finished("y", "cda", 10, "A", [40.1, 40.9, 42.006]))
    board = lb.load(make_root(tmp_path / "b", runs))
    (view,) = board_stats.views(board)
    (pair,) = board_stats.ranking(board, view, "A").pairs
    assert pair.seeds_needed > render.SEEDS_SHOWN and "> 1,000 (no practical difference)" in render.render_markdown(board)
