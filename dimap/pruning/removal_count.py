"""How many weights a group of n loses at a ratio: the one rounding rule every criterion and oracle shares."""
import math


def n_removed(n: int, ratio: float) -> int:
    """Weights removed from a group of n at `ratio`: round half up, so counts are exact and documented."""
    return int(math.floor(ratio * n + 0.5))
