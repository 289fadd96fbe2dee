"""pFedMoAP (Luo et al., ICLR 2025): personalised federated mixture of adaptive prompts.

Client: trains its local prompt (initialised from the global prompt) and a private attention
gating network that mixes the text features of its local prompt and K downloaded non-local
prompts, per image and class; logits = sim(I, T_MoE) + lambda * sim(I, T_L) (Eq. 10). A
first-time participant has no pool entry and trains the global prompt the plain CoOp way.
Uploads its prompt only; the gating network never leaves the client.

Server: keeps a pool with every client's latest prompt and the FedAvg global prompt; a returning
participant downloads the global prompt and the K pool entries nearest (L2) to its own entry.

A never-trained (held-out) client is evaluated with the global prompt alone (the gating needs
local training); its few-shot adaptation runs both of a participant's kinds of round, R_adapt
epochs each: first as a first-time participant (the global prompt, plain CE), then as a
returning one whose pool entry is that prompt (the K experts nearest to it, local prompt and
gating trained as in any round with experts); its prompt never enters the pool.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import FedAvgServer, HeldOut, ParamGroup, Payload, RunContext
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.gating import AttentionGating
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod
from fedmoap.seeding import derive_seed

__all__ = [
    "PFedMoAPClient",
    "PFedMoAPServer",
    "POOL_CHUNK",
    "PromptPool",
    "QUERY_CHUNK",
    "pool_matrix",
    "nearest_experts",
    "PFedMoAP",
]


class PFedMoAPClient(GlobalPromptClient):
    method: "PFedMoAP"

    def __init__(self, method: "PFedMoAP", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        self.gating = AttentionGating(
            backbone.embed_dim, method.d_gating, method.heads, method.reduction, method.attn_scale
        )
        self.experts: Tensor | None = None
        self._expert_text: Tensor | None = None

    def reset(self, cid: int) -> None:
        super().reset(cid)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.run.seed, "gating", cid))
            self.gating.reset_parameters(identity_values=self.method.gating_init == "identity")
        self.set_experts(None)

    def set_classnames(self, classnames: list[str]) -> None:
        """The experts are class-agnostic prompts too: their text features are recomputed for
        the new names; the gating network works per (image, class) for any class."""
        super().set_classnames(classnames)
        self._expert_text = None

    def set_experts(self, experts: Tensor | None) -> None:
        """The non-local prompts this client mixes (None: a first-time participant has none)."""
        self.experts, self._expert_text = experts, None

    @property
    def expert_text(self) -> Tensor | None:
        """Text features of the non-local experts, computed once per set of experts (fixed)."""
        if self._expert_text is None and self.experts is not None and len(self.experts):
            with torch.no_grad():
                self._expert_text = self.text_features(self.experts)
        return self._expert_text

    def extra_state(self) -> dict[str, Tensor]:
        return {} if self.experts is None else {"experts": self.experts}

    def load_extra_state(self, extra: dict[str, Tensor]) -> None:
        self.set_experts(extra.get("experts"))

    def receive(self, payload: Payload) -> None:
        if self.method.local_init == "global" or "experts" not in payload:
            super().receive(payload)  # P_i <- P_g (Alg. 1, line 1); first-timers always
        self.set_experts(payload.get("experts"))

    def prepare_eval(self, payload: Payload) -> None:
        if self.fresh:  # never trained: the global prompt, no experts (as a first-time participant)
            super().prepare_eval(payload)

    def adapt_unseen(self, held: HeldOut) -> None:
        """A first-time participant's round, then a returning participant's with the experts
        nearest to the prompt it would have uploaded (see the module docstring)."""
        super().adapt_unseen(held)
        self.receive(held.download(self.upload()))
        held.train(held.epochs, "adapt/experts")

    def logits(self, batch: dict[str, Tensor], local_text: Tensor) -> Tensor:
        image = batch["features"]
        local = self.backbone.logit_scale * image @ local_text.t()
        if self.experts is None:
            return local
        experts = local_text.unsqueeze(0)
        if self.expert_text is not None:
            experts = torch.cat([experts, self.expert_text.to(local_text.dtype)])
        moe = self.gating(image, experts)  # B C d
        query = self.gating.reduce(image)  # B d
        if self.method.moe_similarity == "cosine":
            moe, query = F.normalize(moe, dim=-1), F.normalize(query, dim=-1)
        mixed = self.backbone.logit_scale * torch.einsum("bd,bcd->bc", query, moe)
        return mixed + self.method.lam * local

    def param_groups(self) -> list[ParamGroup]:
        gating = ParamGroup(list(self.gating.parameters()), self.method.gating_lr, anneal=False)
        return super().param_groups() + [gating]


class PFedMoAPServer(FedAvgServer):
    method: "PFedMoAP"

    def __init__(self, method: "PFedMoAP", init: Payload, run: RunContext) -> None:
        super().__init__(method, init, run)
        self.pool = PromptPool(run.num_clients)
        """Every client's latest prompt, rows of one matrix (:class:`PromptPool`)."""
        self._searched: dict[int, list[int]] = {}
        """The experts of the round's participants (:meth:`prepare_round`), until the pool changes."""

    def num_experts(self, cid: int) -> int:
        return (self.method.experts_per_client or {}).get(cid, self.method.num_experts)

    def payload(self, cid: int, t: int) -> Payload:
        out = super().payload(cid, t)
        if cid in self.pool:
            ids = self._searched.get(cid)
            if ids is None:
                ids = self.pool.nearest(self.pool[cid], self.num_experts(cid), cid)
            out["experts"] = self.pool.rows(ids)
        return out

    def prepare_round(self, t: int, clients: list[int]) -> None:
        """One batched search (:meth:`PromptPool.nearest_many`) for the round's returning clients."""
        self._searched = self.pool.nearest_many([c for c in clients if c in self.pool], self.num_experts)

    def unseen_payload(self, cid: int, upload: Payload | None = None) -> Payload:
        """The global prompt; with ``upload``, also the experts nearest to its prompt (as if it
        were ``cid``'s pool entry; the pool is not changed)."""
        out = self.eval_payload(cid)
        if upload is not None:
            ids = self.pool.nearest(upload["prompt"], self.num_experts(cid), cid)
            out["experts"] = self.pool.rows(ids) if ids else upload["prompt"].new_zeros(0, *upload["prompt"].shape)
        return out

    def aggregate(self, t: int, uploads: dict[int, Payload], weights: dict[int, int]) -> None:
        super().aggregate(t, uploads, weights)
        for cid, up in uploads.items():
            self.pool[cid] = up["prompt"]
        self._searched = {}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pool": self.pool.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pool = PromptPool.of(state["pool"], self.run.num_clients)
        self._searched = {}


POOL_CHUNK = 4096
"""Pool entries whose distances to a prompt are computed at once (bounds the float64 copy)."""


class PromptPool(Mapping[int, Tensor]):
    """Client id -> that client's latest prompt, kept as the rows of one preallocated
    (capacity, D) matrix indexed by client id (capacity: the run's clients, doubled if an id
    falls beyond it): no tensor per client, no copy of the pool per round, and rows never written
    take no memory (the matrix is allocated empty). Reading an entry returns a copy."""

    def __init__(self, capacity: int = 0) -> None:
        self._capacity = max(1, capacity)
        self._matrix: Tensor | None = None
        self._present = torch.zeros(self._capacity, dtype=torch.bool)
        self._shape: torch.Size | None = None
        self._count = 0
        self._end = 0
        """One past the largest id present."""

    @classmethod
    def of(cls, entries: Mapping[int, Tensor], capacity: int = 0) -> "PromptPool":
        """A pool holding ``entries`` (e.g. a checkpoint's ``pool``, ids as ints or strings)."""
        pool = cls(capacity)
        for cid in sorted(int(k) for k in entries):
            pool[cid] = entries[cid] if cid in entries else entries[str(cid)]  # type: ignore[index]
        return pool

    def __len__(self) -> int:
        return self._count

    def __contains__(self, cid: object) -> bool:
        try:
            i = operator.index(cid)  # type: ignore[arg-type]
        except TypeError:
            return False
        return 0 <= i < self._end and bool(self._present[i])

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids().tolist())

    def __getitem__(self, cid: int) -> Tensor:
        if cid not in self:
            raise KeyError(cid)
        assert self._matrix is not None and self._shape is not None
        return self._matrix[cid].view(self._shape).clone()

    def __setitem__(self, cid: int, prompt: Tensor) -> None:
        if self._matrix is None:
            self._shape = prompt.shape
            self._matrix = torch.empty(self._capacity, prompt.numel(), dtype=prompt.dtype, device=prompt.device)
        if prompt.shape != self._shape or prompt.dtype != self._matrix.dtype or prompt.device != self._matrix.device:
            raise ValueError(
                f"pool entry of client {cid}: {tuple(prompt.shape)} {prompt.dtype} on {prompt.device}, "
                f"the pool holds {tuple(self._shape)} {self._matrix.dtype} on {self._matrix.device}"
            )
        if cid >= self._capacity:
            self._grow(max(cid + 1, 2 * self._capacity))
        self._matrix[cid] = prompt.detach().flatten()
        if not self._present[cid]:
            self._present[cid] = True
            self._count += 1
            self._end = max(self._end, cid + 1)

    def _grow(self, capacity: int) -> None:
        assert self._matrix is not None
        matrix = self._matrix.new_empty(capacity, self._matrix.shape[1])
        matrix[: self._end] = self._matrix[: self._end]
        present = torch.zeros(capacity, dtype=torch.bool)
        present[: self._end] = self._present[: self._end]
        self._matrix, self._present, self._capacity = matrix, present, capacity

    def ids(self) -> Tensor:
        """The ids present, ascending (long)."""
        return self._present[: self._end].nonzero().flatten()

    def rows(self, ids: list[int]) -> Tensor:
        """(len(ids), *prompt shape) the entries of ``ids``, in that order (a copy)."""
        assert self._matrix is not None and self._shape is not None
        index = torch.tensor(ids, dtype=torch.long, device=self._matrix.device)
        return self._matrix[index].view(len(ids), *self._shape)

    def to_dict(self) -> dict[int, Tensor]:
        """Id -> entry, ascending: one copy of the present rows that the entries are views of (a
        checkpoint stores it once)."""
        ids = self.ids()
        if self._matrix is None or not len(ids):
            return {}
        assert self._shape is not None
        rows = self._matrix[ids].view(len(ids), *self._shape)
        return dict(zip(ids.tolist(), rows.unbind(0)))

    def distances(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """(ids present ascending, their float64 L2 distances to ``query``), computed
        :data:`POOL_CHUNK` rows at a time exactly as :func:`nearest_experts` does."""
        ids = self.ids()
        own = query.flatten().double()
        if self._matrix is None or not len(ids):
            return ids, own.new_zeros(0)
        dense = len(ids) == self._end  # ids 0..end-1: the matrix's leading rows as they are
        chunks = []
        for i in range(0, len(ids), POOL_CHUNK):
            rows = self._matrix[i : min(i + POOL_CHUNK, self._end)] if dense else self._matrix[ids[i : i + POOL_CHUNK]]
            chunks.append((rows.double() - own).norm(dim=1))
        return ids, torch.cat(chunks)

    def nearest(self, query: Tensor, k: int, cid: int) -> list[int]:
        """Ids of the ``k`` entries nearest to ``query`` as client ``cid``'s entry (``cid``'s own
        entry, if any, excluded): :func:`nearest_experts` over the pool with ``cid`` set to
        ``query``, without changing the pool."""
        others = self._count - (cid in self)
        if k <= 0 or others < 1:
            return []
        ids, dist = self.distances(query)
        dist[ids == cid] = float("inf")
        order = torch.sort(dist, stable=True).indices[: min(k, others)]  # ids ascending: ties by id
        return ids[order].tolist()

    def nearest_many(self, cids: list[int], k: Callable[[int], int]) -> dict[int, list[int]]:
        """``{cid: self.nearest(self[cid], k(cid), cid)}`` for ``cids`` (all in the pool), found
        together: squared distances to every entry by matrix products in float64,
        :data:`QUERY_CHUNK` queries by :data:`POOL_CHUNK` rows at a time, give each query
        candidates (every entry whose distance may be within its k-th nearest's, with a margin
        above the products' rounding error); the candidates' distances are then computed exactly
        as :meth:`nearest` does and sorted (ties to the smaller id), so the result is the same."""
        out: dict[int, list[int]] = {}
        if not cids or self._matrix is None:
            return out
        ids = self.ids()
        n, dim = len(ids), self._matrix.shape[1]
        slack = 64 * (dim + 4) * torch.finfo(torch.float64).eps
        norms = torch.cat(
            [(self._rows(ids, i).double() ** 2).sum(dim=1) for i in range(0, n, POOL_CHUNK)]
        )  # (n,) squared norms
        position = torch.full((self._end,), -1, dtype=torch.long)
        position[ids] = torch.arange(n)
        for q0 in range(0, len(cids), QUERY_CHUNK):
            batch = cids[q0 : q0 + QUERY_CHUNK]
            own = self._matrix[torch.tensor(batch, device=self._matrix.device)].double()  # (Q, D)
            qnorm = norms[position[torch.tensor(batch)]]
            sq = torch.cat(
                [
                    qnorm[:, None] + norms[None, i : i + POOL_CHUNK] - 2 * own @ self._rows(ids, i).double().t()
                    for i in range(0, n, POOL_CHUNK)
                ],
                dim=1,
            )  # (Q, n)
            margin = slack * (qnorm[:, None] + norms[None, :])
            for row, cid in enumerate(batch):
                kk = min(k(cid), n - 1)
                if kk <= 0:
                    out[cid] = []
                    continue
                upper, lower = sq[row] + margin[row], sq[row] - margin[row]
                upper[position[cid]] = float("inf")
                lower[position[cid]] = float("inf")
                bound = torch.kthvalue(upper, kk).values
                cand = (lower <= bound).nonzero().flatten()  # positions ascending: ids ascending
                exact = (self._matrix[ids[cand]].double() - own[row].to(self._matrix.device)).norm(dim=1)
                order = torch.sort(exact, stable=True).indices[:kk]
                out[cid] = ids[cand[order]].tolist()
        return out

    def _rows(self, ids: Tensor, start: int) -> Tensor:
        """The matrix rows of ``ids[start : start + POOL_CHUNK]`` (no copy where ids are dense)."""
        assert self._matrix is not None
        if len(ids) == self._end:
            return self._matrix[start : min(start + POOL_CHUNK, self._end)]
        return self._matrix[ids[start : start + POOL_CHUNK]]


QUERY_CHUNK = 256
"""Queries of :meth:`PromptPool.nearest_many` searched together (bounds its (queries, pool) matrix)."""


def pool_matrix(pool: dict[int, Tensor]) -> tuple[Tensor, Tensor]:
    """(ids ascending, (N, D) their flattened prompts): the pool as one matrix."""
    ids = sorted(pool)
    rows = torch.stack([pool[j].flatten() for j in ids]) if ids else torch.zeros(0, 0)
    return torch.tensor(ids, dtype=torch.long), rows


def nearest_experts(
    pool: dict[int, Tensor], cid: int, k: int, matrix: tuple[Tensor, Tensor] | None = None
) -> list[int]:
    """Ids of the ``k`` pool entries nearest (L2 over the flattened prompt, in float64) to
    ``pool[cid]``, excluding ``cid``; ties go to the smaller client id. ``matrix``: the pool's
    :func:`pool_matrix`, when the caller keeps one for many searches."""
    if k <= 0 or len(pool) < 2:
        return []
    if isinstance(pool, PromptPool) and matrix is None:
        return pool.nearest(pool[cid], k, cid)
    ids, rows = matrix if matrix is not None else pool_matrix(pool)
    own = pool[cid].flatten().double()
    dist = torch.cat([(rows[i : i + POOL_CHUNK].double() - own).norm(dim=1) for i in range(0, len(ids), POOL_CHUNK)])
    dist[ids == cid] = float("inf")
    order = torch.sort(dist, stable=True).indices[: min(k, len(ids) - 1)]  # ids ascending: ties by id
    return ids[order].tolist()


@dataclass
class PFedMoAP(PromptMethod):
    """pFedMoAP (Luo et al., ICLR 2025): a local prompt plus K downloaded non-local prompts mixed
    per image and class by a private attention gating network."""

    name = "pfedmoap"
    client_class = PFedMoAPClient
    server_class = PFedMoAPServer
    declares = replace(
        PROMPT_LEARNER, server_reads="individual", newcomer_uploads=True, client_knobs=("experts_per_client",)
    )

    num_experts: int = 9
    """K non-local experts per client (nearest pool entries by L2 distance)."""
    experts_per_client: Optional[dict[int, int]] = None
    """Per-client K overrides, e.g. {3: 4}."""
    lam: float = 0.5
    """lambda of Eq. 10: weight of the local-prompt logits (>= 0; above 1, an ablation)."""
    d_gating: int = 128
    """Width the features are reduced to before the gating attention (the paper's 128)."""
    heads: int = 8
    """Attention heads of the gating network (must divide d_gating)."""
    reduction: Literal["avg_pool", "strided"] = "avg_pool"
    """How features are reduced to d_gating: ``avg_pool`` (the paper's "pooling") or ``strided``
    (every k-th dimension, as the reference code)."""
    attn_scale: Optional[float] = None
    """Attention score scale: null = 1/sqrt(d_head); the reference code uses a fixed 10.0."""
    moe_similarity: Literal["cosine", "dot"] = "cosine"
    """cosine: sim(I, T_MoE) as the paper's cosine; dot: the reference code's raw dot product."""
    gating_lr: float = 0.01
    """Learning rate of the gating network (constant)."""
    gating_init: Literal["default", "identity"] = "default"
    """Initialisation of a client's gating network (the paper does not say): ``default`` is
    PyTorch's for all four projections (as the reference code); ``identity`` starts the value and
    output projections at the identity, so an untrained gating averages the experts."""

    local_init: Literal["global", "own"] = "global"
    """Where a returning participant's local prompt starts each round: ``global`` = the global
    prompt (the paper's Alg. 1, line 1); ``own`` = its own prompt of its last round (an ablation:
    what the restart costs where the global prompt is of no use to the client)."""

    def problems(self) -> list[str]:
        out = super().problems()
        out += [
            m
            for ok, m in [
                (self.num_experts >= 0, "method.num_experts must be >= 0"),
                (self.heads >= 1, "method.heads must be >= 1"),
                (self.d_gating >= 1, "method.d_gating must be >= 1"),
                (
                    self.heads < 1 or self.d_gating % self.heads == 0,
                    "method.d_gating must be divisible by method.heads",
                ),
                (self.gating_lr > 0, "method.gating_lr must be > 0"),
                (self.lam >= 0, "method.lam must be >= 0 (a weight of the local logits; above 1 is an ablation)"),
                (self.attn_scale is None or self.attn_scale > 0, "method.attn_scale must be > 0 or null"),
            ]
            if not ok
        ]
        bad = [c for c, k in (self.experts_per_client or {}).items() if k < 0]
        if bad:
            out.append(f"method.experts_per_client: negative K for clients {bad}")
        return out

    def backbone_problems(self, backbone: Backbone) -> list[str]:
        if self.reduction == "strided" and backbone.embed_dim % self.d_gating:
            return [
                f"method.reduction strided needs the feature size ({backbone.embed_dim}) to "
                f"be divisible by method.d_gating ({self.d_gating})"
            ]
        return []
