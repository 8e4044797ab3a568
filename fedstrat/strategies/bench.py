"""Nodes that sit out rounds after unusable replies.

A node drawn to train whose reply is unusable sits out the next rounds; :math:`c` counts its
unusable replies in a row, :math:`B` = :data:`BENCH_MAX`. A rejected reply (what it sent cannot
be aggregated: invalid arrays, NaN / Inf, a size claim that contradicts its learned size, an
update that would overflow; an honest node does not send that by chance) benches it for
:math:`\\min(b\\,2^{c-1}, B)` rounds, :math:`b` = :data:`FIRST_REJECTED`. A failed one (an
error reply, or no reply before the timeout: often transient, e.g. a node restarting) is
forgiven once, then benches it for :math:`\\min(2^{c-2}, B)` rounds. A usable reply sets
:math:`c` back to 0. While it sits out it is not part of the round's population: no training
slot is spent on it and no stratum waits for tracked evidence from it (a stratum of nodes that
never answer usably would otherwise hold every decision at the proxy's, and take a slot each
round). Its share of the round's target is then left out, as for a node that is not connected.
If every available node sat out, none does that round.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: the longest sit-out, in rounds
BENCH_MAX = 64
#: the first sit-out after a rejected reply, in rounds
FIRST_REJECTED = 16


@dataclass
class Bench:
    """Unusable replies in a row (``strikes``) and the last round each node sits out
    (``until``), see the module docstring."""

    strikes: dict[int, int] = field(default_factory=dict)
    until: dict[int, int] = field(default_factory=dict)

    def out(self, server_round: int) -> frozenset[int]:
        """The nodes that sit out ``server_round``."""
        return frozenset(n for n, last in self.until.items() if last >= server_round)

    def record(
        self, server_round: int, usable: Iterable[int], rejected: Iterable[int],
        failed: Iterable[int] = (),
    ) -> list[tuple[int, int, int]]:
        """Count the round's replies; returns ``(node, rounds out, strikes)`` of each node that
        now sits out (from ``server_round + 1``)."""
        for n in usable:
            self.strikes.pop(int(n), None)
            self.until.pop(int(n), None)
        kind = dict.fromkeys((int(n) for n in failed), False)
        kind.update(dict.fromkeys((int(n) for n in rejected), True))
        out = []
        for n in sorted(kind):
            c = self.strikes.get(n, 0) + 1
            self.strikes[n] = c
            length = (min(FIRST_REJECTED * 2 ** (c - 1), BENCH_MAX) if kind[n]
                      else 0 if c == 1 else min(2 ** (c - 2), BENCH_MAX))
            if length:
                self.until[n] = server_round + length
                out.append((n, length, c))
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON form (node ids as strings)."""
        return {"strikes": {str(n): c for n, c in self.strikes.items()},
                "until": {str(n): r for n, r in self.until.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Bench:
        """A bench restored from :meth:`state_dict` (None or empty: a fresh one)."""
        state = state or {}
        return cls({int(n): int(c) for n, c in state.get("strikes", {}).items()},
                   {int(n): int(r) for n, r in state.get("until", {}).items()})
