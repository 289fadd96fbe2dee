"""Who trains in round t, and when everyone is evaluated: the run's schedule, one answer for the
round loop, the privacy accountant's plan and evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedmoap.seeding import numpy_rng

__all__ = ["Schedule"]


@dataclass(frozen=True)
class Schedule:
    """Who trains when, and when everyone is evaluated."""

    seed: int
    num_clients: int
    participation: float = 1.0
    local_epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 512
    eval_every: int = 1
    rounds: int = 1
    """The run's last round (always evaluated)."""
    count: int | None = None
    """Exact participants per round (``fed.participants``) instead of the fraction."""
    own_label_space: bool = False
    """``eval.local_label_space own``: each client is evaluated among its own classes."""
    held_out: frozenset[int] = frozenset()
    """Clients that never train (``eval.modes`` unseen_clients): they are neither drawn nor
    evaluated as training clients (:mod:`fedmoap.federation.evaluation` evaluates them)."""
    eval_clients: int | None = None
    """Training clients evaluated in an evaluated round before the last
    (``eval.clients_per_round``); None: all of them."""

    @property
    def clients(self) -> list[int]:
        """The training clients: all but the held-out ones."""
        return [c for c in range(self.num_clients) if c not in self.held_out]

    def participants(self, t: int) -> list[int]:
        """The clients of round ``t``: a seeded draw of ``count`` or else max(1, r * N rounded
        half up) of the N training clients, sorted (0.5 x 7 -> 4, 0.5 x 5 -> 3)."""
        pool = self.clients
        n = len(pool)
        m = self.count if self.count is not None else max(1, math.floor(self.participation * n + 0.5))
        m = min(n, m)
        if m == n:
            return pool
        return sorted(pool[int(i)] for i in numpy_rng(self.seed, "participants", t).choice(n, m, replace=False))

    def evaluates(self, t: int) -> bool:
        """Whether round ``t`` is evaluated: every ``eval_every``-th round and the last."""
        return t % self.eval_every == 0 or t >= self.rounds

    def evaluated(self, t: int) -> list[int]:
        """The training clients evaluated after round ``t``, ascending: all of them in the last
        round or without ``eval_clients``, else a seeded draw of ``eval_clients`` of them (seed,
        ``t``), the same for every process."""
        pool = self.clients
        if self.eval_clients is None or t >= self.rounds or self.eval_clients >= len(pool):
            return pool
        draw = numpy_rng(self.seed, "eval_clients", t).choice(len(pool), self.eval_clients, replace=False)
        return sorted(pool[int(i)] for i in draw)
