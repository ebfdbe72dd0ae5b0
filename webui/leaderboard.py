"""Arena leaderboard: win rates and a Bradley-Terry rating with bootstrap confidence intervals.

Bradley-Terry says variant i beats j with probability p_i / (p_i + p_j). The strengths are
fitted with Hunter's MM iteration (2004), ties counting half a win for each side; a "both
bad" verdict is a tie too (neither was preferred). A small prior (a virtual tie between
every pair) keeps the fit finite when one variant has won every battle. Ratings are shown
on the Elo scale: 1000 + 400·log10(p), with the strengths' geometric mean at 1000.
Confidence intervals are percentiles of the ratings refitted on resampled votes.

    python -m webui.leaderboard            # print the leaderboard of every domain from the votes file
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from webui.votes import Vote

SCORE_A = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}
"""What a verdict is worth to side A (side B gets one minus it)."""
TABLE_HEADERS = ["rank", "variant", "battles", "win rate", "BT rating", "CI", "wins", "losses", "ties", "both bad"]


@dataclass(frozen=True)
class LeaderboardConfig:
    """How the Bradley-Terry fit and its bootstrap run."""

    prior_games: float = 1.0
    """Virtual games, split as a tie, between every pair of variants: keeps unbeaten ratings finite."""
    bootstrap_rounds: int = 200
    confidence: float = 0.95
    seed: int = 0
    """Seeds the resampling, so the same votes always give the same intervals."""
    max_iterations: int = 1000
    tolerance: float = 1e-9


@dataclass(frozen=True)
class Standing:
    """One variant's row of the leaderboard."""

    variant: str
    battles: int
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float | None
    """(wins + half the ties and both-bad verdicts) / battles; None before any battle."""
    rating: float | None
    ci_low: float | None
    ci_high: float | None


def fit_bradley_terry(wins: np.ndarray, config: LeaderboardConfig = LeaderboardConfig()) -> np.ndarray:
    """Strengths p (geometric mean 1) from ``wins[i, j]``: how often i beat j (ties already split in halves)."""
    k = wins.shape[0]
    wins = wins + (config.prior_games / 2) * (1 - np.eye(k))
    games = wins + wins.T
    won = wins.sum(axis=1)
    strength = np.ones(k)
    for _ in range(config.max_iterations):
        # MM update: p_i <- W_i / sum_j n_ij / (p_i + p_j)
        denominator = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated = won / denominator
        updated /= np.exp(np.mean(np.log(updated)))
        converged = np.max(np.abs(np.log(updated) - np.log(strength))) < config.tolerance
        strength = updated
        if converged:
            break
    return strength


def elo_scale(strength: np.ndarray) -> np.ndarray:
    return 1000.0 + 400.0 * np.log10(strength)


def _battles(votes: Sequence[Vote], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrays (index of A, index of B, score of A) of the votes between known variants."""
    kept = [v for v in votes if v.variant_a in index and v.variant_b in index and v.variant_a != v.variant_b]
    a = np.array([index[v.variant_a] for v in kept], dtype=int)
    b = np.array([index[v.variant_b] for v in kept], dtype=int)
    score = np.array([SCORE_A[v.outcome] for v in kept], dtype=float)
    return a, b, score


def _win_matrix(k: int, a: np.ndarray, b: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    weight = np.ones(len(a)) if weight is None else weight
    wins = np.zeros((k, k))
    np.add.at(wins, (a, b), weight * score)
    np.add.at(wins, (b, a), weight * (1 - score))
    return wins


def bt_ratings(votes: Sequence[Vote], variants: Sequence[str], config: LeaderboardConfig = LeaderboardConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elo-scale ratings of ``variants`` and the low and high ends of their confidence intervals."""
    index = {name: i for i, name in enumerate(variants)}
    a, b, score = _battles(votes, index)
    k = len(variants)
    rating = elo_scale(fit_bradley_terry(_win_matrix(k, a, b, score), config))
    if len(a) == 0:
        return rating, rating.copy(), rating.copy()
    rng = np.random.default_rng(config.seed)
    samples = np.empty((config.bootstrap_rounds, k))
    for r in range(config.bootstrap_rounds):
        # Resampling votes with replacement = multinomial counts on the votes.
        weight = rng.multinomial(len(a), np.full(len(a), 1 / len(a))).astype(float)
        samples[r] = elo_scale(fit_bradley_terry(_win_matrix(k, a, b, score, weight), config))
    tail = (1 - config.confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
    return rating, low, high


def standings(votes: Sequence[Vote], variants: Sequence[str], config: LeaderboardConfig = LeaderboardConfig()) -> list[Standing]:
    """Every variant's standing, best rating first; variants with no battle come last, unrated."""
    rated = [name for name in variants if any(name in (v.variant_a, v.variant_b) for v in votes)]
    rating, low, high = bt_ratings(votes, rated, config) if len(rated) >= 2 else (np.array([]),) * 3
    rows = []
    for name in variants:
        won = lost = tied = bad = 0
        for vote in votes:
            if name not in (vote.variant_a, vote.variant_b):
                continue
            mine = SCORE_A[vote.outcome] if vote.variant_a == name else 1 - SCORE_A[vote.outcome]
            won += mine == 1.0
            lost += mine == 0.0
            tied += vote.outcome == "tie"
            bad += vote.outcome == "both_bad"
        battles = won + lost + tied + bad
        at = rated.index(name) if name in rated and len(rating) else None
        rows.append(Standing(
            name, battles, won, lost, tied, bad,
            (won + 0.5 * (tied + bad)) / battles if battles else None,
            *((float(rating[at]), float(low[at]), float(high[at])) if at is not None else (None, None, None)),
        ))
    return sorted(rows, key=lambda row: (row.rating is None, -(row.rating or 0.0), -(row.win_rate or 0.0), row.variant))


def standings_table(rows: Sequence[Standing], confidence: float = LeaderboardConfig.confidence) -> list[list[object]]:
    """Rows for a gr.Dataframe with TABLE_HEADERS."""
    table: list[list[object]] = []
    for rank, row in enumerate(rows, start=1):
        rated = row.rating is not None
        table.append([
            rank if rated else "–", row.variant, row.battles,
            f"{row.win_rate:.0%}" if row.win_rate is not None else "–",
            round(row.rating) if rated else "–",
            f"{row.ci_low:.0f} to {row.ci_high:.0f} ({confidence:.0%})" if rated else "–",
            row.wins, row.losses, row.ties, row.both_bad,
        ])
    return table


def main(argv: list[str] | None = None) -> None:
    from bots.cli_args import CommandParser
    from bots.registry import DOMAINS, VARIANTS
    from webui.votes import default_store

    CommandParser(prog="python -m webui.leaderboard", description="Print the arena leaderboard of each domain from the votes file (TOP_VOTES_DB).").parse_args(argv)
    store = default_store()
    for domain in DOMAINS:
        print(f"## {domain}")
        variants = [name for name, spec in VARIANTS.items() if spec.domain == domain]
        print(" | ".join(TABLE_HEADERS))
        for row in standings_table(standings(store.votes(domain), variants)):
            print(" | ".join(str(cell) for cell in row))


if __name__ == "__main__":
    main()
