"""One type per tensor, least total error under a size budget: a multiple-choice knapsack.

Two solvers run and the better answer wins:
- the Lagrangian sweep: on each tensor's lower convex hull of (bytes, error) points, take the
  upgrades in order of error saved per byte while they fit (the path of min Σ e + λ·b as λ falls),
  then fill what is left greedily with any option that still fits;
- a dynamic programme over bytes in units of budget/RESOLUTION, each option's bytes rounded up, so
  its answer always fits; with bytes that are whole units (small cases) it is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RESOLUTION = 20000
_DP_CELLS = 40_000_000  # items × units kept for the back-track


@dataclass(frozen=True)
class Option:
    type: str
    bytes: int
    error: float


class InfeasibleBudget(ValueError):
    def __init__(self, minimum: int) -> None:
        self.minimum = minimum
        super().__init__(f"budget below the smallest possible size ({minimum} bytes)")


def lower_hull(options: list[Option]) -> list[int]:
    """Indices of the options on the lower convex hull of (bytes, error), by bytes ascending; an
    option that costs more and saves nothing is never on it."""
    order = sorted(range(len(options)), key=lambda i: (options[i].bytes, options[i].error))
    pts: list[int] = []
    for i in order:
        o = options[i]
        if pts and options[pts[-1]].bytes == o.bytes:
            continue  # same bytes, larger or equal error (sorted)
        if pts and o.error >= options[pts[-1]].error:
            continue  # dominated: more bytes, no less error
        while len(pts) >= 2:
            a, b = options[pts[-2]], options[pts[-1]]
            # b lies on or above the segment a-o: not on the lower hull
            if (b.error - a.error) * (o.bytes - a.bytes) >= (o.error - a.error) * (b.bytes - a.bytes):
                pts.pop()
            else:
                break
        pts.append(i)
    return pts


def _total(items: list[list[Option]], choice: list[int]) -> tuple[int, float]:
    return (sum(items[k][c].bytes for k, c in enumerate(choice)),
            sum(items[k][c].error for k, c in enumerate(choice)))


def lagrangian_greedy(items: list[list[Option]], budget: int) -> list[int]:
    hulls = [lower_hull(opts) for opts in items]
    choice = [h[0] for h in hulls]
    used = sum(items[k][c].bytes for k, c in enumerate(choice))
    # every hull step, by error saved per byte; convexity keeps each tensor's steps in order
    steps = []
    for k, h in enumerate(hulls):
        for s in range(1, len(h)):
            a, b = items[k][h[s - 1]], items[k][h[s]]
            steps.append(((a.error - b.error) / (b.bytes - a.bytes), k, s))
    steps.sort(key=lambda x: -x[0])
    pos = [0] * len(items)
    for _, k, s in steps:
        if pos[k] != s - 1:
            continue  # an earlier step of this tensor did not fit
        a, b = items[k][hulls[k][s - 1]], items[k][hulls[k][s]]
        if used + b.bytes - a.bytes > budget:
            break  # the Lagrangian solution for the budget's λ
        used += b.bytes - a.bytes
        choice[k] = hulls[k][s]
        pos[k] = s
    # greedy fill: any option that fits and saves error, best saving per byte first
    while True:
        best = None
        for k, opts in enumerate(items):
            cur = opts[choice[k]]
            for i, o in enumerate(opts):
                extra = o.bytes - cur.bytes
                saved = cur.error - o.error
                if saved <= 0 or used + extra > budget:
                    continue
                rate = saved / extra if extra > 0 else math.inf
                if best is None or rate > best[0]:
                    best = (rate, k, i, extra)
        if best is None:
            return choice
        _, k, i, extra = best
        choice[k] = i
        used += extra


def dynamic_programme(items: list[list[Option]], budget: int) -> list[int] | None:
    """Exact over bytes rounded up to units; None when the rounding leaves no feasible answer."""
    n = len(items)
    units = max(1, min(RESOLUTION, _DP_CELLS // max(1, n)))
    unit = max(1, math.ceil(budget / units))
    cap = budget // unit
    costs = [np.array([math.ceil(o.bytes / unit) for o in opts], dtype=np.int64) for opts in items]
    if sum(int(c.min()) for c in costs) > cap:
        return None
    best = np.zeros(cap + 1)  # least error with at most c units, over the items so far
    picks = np.zeros((n, cap + 1), dtype=np.int16)
    for k, opts in enumerate(items):
        new = np.full(cap + 1, np.inf)
        for i, o in enumerate(opts):
            c = int(costs[k][i])
            if c > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[c:] = best[: cap + 1 - c] + o.error
            better = cand < new
            new[better] = cand[better]
            picks[k][better] = i
        best = new
    if not np.isfinite(best[cap]):
        return None
    choice = [0] * n
    c = cap
    for k in range(n - 1, -1, -1):
        i = int(picks[k][c])
        choice[k] = i
        c -= int(costs[k][i])
    return choice


def solve(items: list[list[Option]], budget: int) -> list[int]:
    """The index of the chosen option for each item: least Σ error with Σ bytes ≤ budget."""
    minimum = sum(min(o.bytes for o in opts) for opts in items)
    if minimum > budget:
        raise InfeasibleBudget(minimum)
    candidates = [lagrangian_greedy(items, budget)]
    dp = dynamic_programme(items, budget)
    if dp is not None:
        candidates.append(dp)
    return min(candidates, key=lambda ch: _total(items, ch)[1])
