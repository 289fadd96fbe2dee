"""Per-client state between rounds: small tensors (prompts, gating, optimiser state), on CPU.

This is all that grows with the number of clients; the model itself exists once per process.
"""
from __future__ import annotations

from typing import Any


class ClientStore:
    """Client id -> the state a :class:`~fedmoap.methods.base.ClientModule` saved for it."""

    def __init__(self) -> None:
        self._states: dict[int, dict[str, Any]] = {}

    def get(self, cid: int) -> dict[str, Any] | None:
        return self._states.get(cid)

    def put(self, cid: int, state: dict[str, Any]) -> None:
        self._states[cid] = state

    def __contains__(self, cid: int) -> bool:
        return cid in self._states

    def __len__(self) -> int:
        return len(self._states)

    def state_dict(self) -> dict[int, dict[str, Any]]:
        return dict(self._states)

    def load_state_dict(self, states: dict[int, dict[str, Any]]) -> None:
        self._states = {int(k): v for k, v in states.items()}
