"""How parameters read in a terminal line: shared by the search progress and the leaderboard."""

from __future__ import annotations


def short(key: str) -> str:
    """loss.terms.dice -> dice, optim.lr -> lr: the last part is what a person reads."""
    return key.split(".")[-1]


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
