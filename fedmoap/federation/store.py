"""Per-client state between rounds: small tensors (prompts, gating, optimiser state).

This is all that grows with the number of clients; the model itself exists once per process.
Each new state goes to its own file ``<root>/<cid>/round_<t>.pt`` and only ``cid -> t`` is kept
in memory, so memory does not grow with the number of clients and a round's checkpoint holds
only the index. Used by :class:`~fedmoap.federation.rounds.Federation`:

- ``ref = store.write(cid, state, t)`` on the rank that trained ``cid`` in round ``t``;
- ``store.adopt(refs)`` on every rank with the gathered refs of all ranks;
- ``store.get(cid)`` when a rank trains or evaluates ``cid``;
- ``store.reset(refs)`` where the index comes from elsewhere (a Flower node's Context state).

Old versions are deleted once no kept checkpoint needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedmoap.errors import FedmoapError
from fedmoap.io import atomic_torch_save, round_file, round_versions

__all__ = ["ClientStore"]


class ClientStore:
    """Each client's state versioned on disk under ``root``; only the index lives in memory.

    Every rank may write (the clients it trained) and read (the clients it trains or evaluates),
    so ``root`` must be visible to all ranks, like the run directory that holds it.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._index: dict[int, int] = {}

    def path(self, cid: int, t: int) -> Path:
        return self.root / str(cid) / round_file(t)

    def write(self, cid: int, state: dict[str, Any], t: int) -> int:
        atomic_torch_save(self.path(cid, t), state)
        return t

    def adopt(self, refs: dict[int, Any]) -> None:
        self._index.update({int(c): int(t) for c, t in refs.items()})

    def reset(self, refs: dict[int, Any]) -> None:
        """The index becomes ``refs`` alone (client id -> round of its current version); no file is read."""
        self._index = {int(c): int(t) for c, t in refs.items()}

    def get(self, cid: int) -> dict[str, Any] | None:
        if cid not in self._index:
            return None
        path = self.path(cid, self._index[cid])
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise FedmoapError(
                f"client state {path} is missing, corrupt or unreadable "
                f"({type(exc).__name__}); resume from a copy of the run "
                "directory that has it"
            ) from None
        if not isinstance(state, dict):
            raise FedmoapError(
                f"client state {path} holds a {type(state).__name__}, not a client's "
                "state; resume from a copy of the run directory that has it"
            )
        return state

    def __contains__(self, cid: int) -> bool:
        return cid in self._index

    def __len__(self) -> int:
        return len(self._index)

    def state_dict(self) -> dict[str, Any]:
        return {"index": dict(self._index)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Adopt a checkpoint's index after reading every file it names once, so that a missing
        or corrupt client state stops a resume before anything is written."""
        self.reset(state["index"])
        for cid in sorted(self._index):
            self.get(cid)

    def collect_garbage(self, clients: list[int], keep: int, t: int) -> None:
        """After round ``t``'s checkpoint: delete the versions of ``clients`` that none of the
        checkpoints of rounds t-keep+1..t refers to (the one of round r refers to the newest
        version <= r). Only the clients that trained in those rounds can have such versions."""
        for cid in clients:
            folder = self.root / str(cid)
            if not folder.is_dir():
                continue
            versions = round_versions(folder)
            needed = {max((v for v in versions if v <= r), default=None) for r in range(t - max(keep, 1) + 1, t + 1)}
            for v in versions:
                if v <= t and v not in needed:
                    self.path(cid, v).unlink(missing_ok=True)
