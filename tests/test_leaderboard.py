"""Bradley-Terry fit and leaderboard rows on hand-made votes (no model, no database)."""

from __future__ import annotations

import numpy as np
import pytest

from webui.leaderboard import LeaderboardConfig, bt_ratings, fit_bradley_terry, standings, standings_table
from webui.votes import Vote

PAIR = ["ecommerce-lora", "ecommerce-prompt"]
FAST = LeaderboardConfig(bootstrap_rounds=100)


def _votes(*outcomes: tuple[str, str, str]) -> list[Vote]:
    return [Vote("ecommerce", "q", a, b, "ra", "rb", outcome) for a, b, outcome in outcomes]


def test_a_variant_that_always_wins_ranks_first_on_either_side() -> None:
    votes = _votes(*[("ecommerce-lora", "ecommerce-prompt", "b")] * 6, *[("ecommerce-prompt", "ecommerce-lora", "a")] * 6)
    rows = standings(votes, PAIR, FAST)
    assert [row.variant for row in rows] == ["ecommerce-prompt", "ecommerce-lora"]
    best, worst = rows
    assert best.wins == 12 and best.losses == 0 and best.win_rate == 1.0 and worst.win_rate == 0.0
    assert best.rating > 1000 > worst.rating
    assert np.isfinite(best.rating)  # the prior keeps an unbeaten rating finite


def test_symmetric_votes_give_equal_strengths() -> None:
    votes = _votes(*[("ecommerce-lora", "ecommerce-prompt", "a")] * 5, *[("ecommerce-lora", "ecommerce-prompt", "b")] * 5)
    rating, low, high = bt_ratings(votes, PAIR, FAST)
    assert rating == pytest.approx([1000.0, 1000.0])
    # Only ties and both-bad verdicts: equal too, and each counts half a win.
    rows = standings(_votes(("ecommerce-lora", "ecommerce-prompt", "tie"), ("ecommerce-prompt", "ecommerce-lora", "both_bad")), PAIR, FAST)
    assert [row.rating for row in rows] == pytest.approx([1000.0, 1000.0])
    assert all(row.win_rate == 0.5 and row.ties == 1 and row.both_bad == 1 for row in rows)


def test_confidence_intervals_contain_the_estimate_and_narrow_with_more_votes() -> None:
    few = _votes(*[("ecommerce-lora", "ecommerce-prompt", "a")] * 3, ("ecommerce-lora", "ecommerce-prompt", "b"))
    many = few * 20
    for votes in (few, many):
        rating, low, high = bt_ratings(votes, PAIR, FAST)
        assert np.all(low <= rating + 1e-9) and np.all(rating <= high + 1e-9)
    width = lambda votes: np.ptp(bt_ratings(votes, PAIR, FAST)[1:], axis=0)[0]  # noqa: E731
    assert width(many) < width(few)


def test_three_variants_are_ordered_by_strength() -> None:
    names = ["x", "y", "z"]
    votes = _votes(*[("x", "y", "a")] * 8, *[("x", "y", "b")] * 2, *[("y", "z", "a")] * 8, *[("y", "z", "b")] * 2, *[("x", "z", "a")] * 5)
    rows = standings(votes, names, FAST)
    assert [row.variant for row in rows] == ["x", "y", "z"]
    assert rows[0].rating - rows[1].rating == pytest.approx(rows[1].rating - rows[2].rating, rel=0.5)


def test_mm_fit_matches_the_closed_form_for_two_players() -> None:
    # Two players, no prior: p1/p2 = wins1/wins2.
    strength = fit_bradley_terry(np.array([[0.0, 3.0], [1.0, 0.0]]), LeaderboardConfig(prior_games=0.0))
    assert strength[0] / strength[1] == pytest.approx(3.0)
    assert np.prod(strength) == pytest.approx(1.0)


def test_unplayed_variants_are_listed_unrated() -> None:
    rows = standings([], PAIR, FAST)
    assert all(row.rating is None and row.battles == 0 for row in rows)
    table = standings_table(rows)
    assert [r[1] for r in table] == PAIR and table[0][4] == "–"
    rows = standings(_votes(("ecommerce-lora", "ecommerce-prompt", "a")), PAIR, FAST)
    assert standings_table(rows)[0][:3] == [1, "ecommerce-lora", 1]
