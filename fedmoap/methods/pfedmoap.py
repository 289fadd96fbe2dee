"""pFedMoAP (Luo et al., ICLR 2025): personalised federated mixture of adaptive prompts.

Client: trains its local prompt (initialised from the global prompt) and a private attention
gating network that mixes the text features of its local prompt and K downloaded non-local
prompts, per image and class; logits = sim(I, T_MoE) + lambda * sim(I, T_L) (Eq. 10). A
first-time participant has no pool entry and trains the global prompt the plain CoOp way.
Uploads its prompt only; the gating network never leaves the client.

Server: keeps a pool with every client's latest prompt and the FedAvg global prompt; a returning
participant downloads the global prompt and the K pool entries nearest (L2) to its own entry.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmoap.backbones.base import Backbone
from fedmoap.config import RunConfig
from fedmoap.gating import AttentionGating
from fedmoap.methods.base import FedAvgServer, Payload, PromptClient
from fedmoap.seeding import derive_seed


class PFedMoAPClient(PromptClient):
    def __init__(self, backbone: Backbone, classnames: list[str], cfg: RunConfig) -> None:
        super().__init__(backbone, classnames, cfg)
        a = cfg.pfedmoap
        self.gating = AttentionGating(backbone.embed_dim, a.d_gating, a.heads, a.reduction, a.attn_scale)
        self.experts: Tensor | None = None
        self.expert_text: Tensor | None = None

    def reset(self, cid: int) -> None:
        super().reset(cid)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed, "gating", cid))
            self.gating.reset_parameters(identity_values=self.cfg.pfedmoap.gating_init == "identity")
        self._set_experts(None)

    def _set_experts(self, experts: Tensor | None) -> None:
        """Keep the non-local prompts and compute their text features once (fixed this round)."""
        self.experts = experts
        self.expert_text = None
        if experts is not None and len(experts):
            with torch.no_grad():
                feats = self.backbone.encode_prompts(self.slots, experts.to(self.ctx.device))
                self.expert_text = F.normalize(feats, dim=-1)

    def extra_state(self) -> dict[str, Tensor]:
        return {} if self.experts is None else {"experts": self.experts}

    def load_extra_state(self, extra: dict[str, Tensor]) -> None:
        self.experts, self.expert_text = extra.get("experts"), None

    def receive(self, payload: Payload) -> None:
        self.ctx.data.copy_(payload["global"])
        self._set_experts(payload.get("experts"))

    def upload(self) -> dict[str, Tensor]:
        return {"prompt": self.ctx.detach().cpu().clone()}

    def prepare_eval(self, payload: Payload, has_state: bool) -> None:
        if not has_state:
            self.ctx.data.copy_(payload["global"])
        self._set_experts(self.experts)

    @property
    def uses_experts(self) -> bool:
        """A client with a pool entry mixes experts (possibly only its own if the pool is empty)."""
        return self.experts is not None

    def text_features(self) -> tuple[Tensor, Tensor | None]:
        return super().text_features(), self.expert_text

    def logits(self, image: Tensor, text: tuple[Tensor, Tensor | None]) -> Tensor:
        local_text, expert_text = text
        local = self.backbone.logit_scale * image @ local_text.t()
        if not self.uses_experts:
            return local
        experts = local_text.unsqueeze(0)
        if expert_text is not None:
            experts = torch.cat([experts, expert_text.to(local_text.dtype)])
        moe = self.gating(image, experts)                                    # B C d
        query = self.gating.reduce(image)                                    # B d
        if self.cfg.pfedmoap.moe_similarity == "cosine":
            moe, query = F.normalize(moe, dim=-1), F.normalize(query, dim=-1)
        mixed = self.backbone.logit_scale * torch.einsum("bd,bcd->bc", query, moe)
        return mixed + self.cfg.pfedmoap.lam * local

    def param_groups(self) -> list[dict]:
        gating = {"params": list(self.gating.parameters()), "lr": self.cfg.pfedmoap.gating_lr,
                  "cosine": False}
        return super().param_groups() + [gating]


class PFedMoAPServer(FedAvgServer):
    def __init__(self, cfg: RunConfig, init_prompt: Tensor) -> None:
        super().__init__(cfg, init_prompt)
        self.pool: dict[int, Tensor] = {}

    def num_experts(self, cid: int) -> int:
        a = self.cfg.pfedmoap
        return (a.experts_per_client or {}).get(cid, a.num_experts)

    def payload(self, cid: int) -> Payload:
        out = {"global": self.global_prompt}
        if cid in self.pool:
            ids = nearest_experts(self.pool, cid, self.num_experts(cid))
            out["experts"] = (torch.stack([self.pool[j] for j in ids]) if ids
                              else self.global_prompt.new_zeros(0, *self.global_prompt.shape))
        return out

    def aggregate(self, uploads: dict[int, Payload], weights: dict[int, int]) -> None:
        super().aggregate(uploads, weights)
        for cid, up in uploads.items():
            self.pool[cid] = up["prompt"]

    def state_dict(self) -> dict:
        return {"global": self.global_prompt, "pool": dict(self.pool)}

    def load_state_dict(self, state: dict) -> None:
        self.global_prompt = state["global"]
        self.pool = {int(k): v for k, v in state["pool"].items()}


def nearest_experts(pool: dict[int, Tensor], cid: int, k: int) -> list[int]:
    """Ids of the ``k`` pool entries nearest (L2 over the flattened prompt) to ``pool[cid]``,
    excluding ``cid``; ties go to the smaller client id."""
    others = sorted(j for j in pool if j != cid)
    if not others or k <= 0:
        return []
    own = pool[cid].flatten().double()
    dist = (torch.stack([pool[j].flatten() for j in others]).double() - own).norm(dim=1).tolist()
    order = sorted(range(len(others)), key=lambda i: (dist[i], others[i]))
    return [others[i] for i in order[:k]]
