"""PromptFL+FedAMP (Huang et al., AAAI 2021): attentive message passing between personal prompts.

Every client keeps its own prompt w_i. The server keeps each client's last uploaded prompt and
sends participant i its personalised cloud model ``u_i = sum_j xi_ij w_j`` (j over every client
with an uploaded prompt; w_i = the initial prompt before i's first upload). The client starts
from u_i (``amp_init: u``; ``previous`` keeps its own w_i), minimises
``F_i(w) + lam / (2 alpha_k) * ||w - u_i||^2`` for the local epochs (the term on the live
parameter), uploads w and is evaluated with it. A never-trained (held-out) client takes the mean
of the w_i as its model and, adapting, as its u_i.

Message weights (``variant``):

- ``attentive`` (FedAMP): ``xi_ij = alpha_k * A'(||w_i - w_j||^2)`` for j != i with
  ``A(x) = 1 - exp(-x / sigma)``, so ``A'(x) = exp(-x / sigma) / sigma``, and
  ``xi_ii = 1 - sum_j xi_ij``. Guard: ``alpha_k = min(alpha, 1 / sum_j A'(d_ij))`` keeps
  ``xi_ii >= 0`` (identical prompts give A' = 1/sigma each, and with sigma = 1 and nine neighbours
  the unguarded ``xi_ii`` is -8). ``sigma: auto`` takes the median squared distance between the
  prompts involved, the scale prompts actually have.
- ``heuristic`` (HeurFedAMP, same paper, scale-free): ``xi_ii = xi`` and
  ``xi_ij = (1 - xi) * softmax_j(sigma_h * cos(w_i, w_j))``.

The reference implementations (PFLlib ``clientamp.py``, PromptFolio ``promptflFedAMP.py``) put
the proximal term on ``.data`` / ``state_dict()`` (no gradient) with an unsquared norm, and
PromptFolio's weight ``1 - exp(d / sigma)`` is <= 0 (a sign error); neither is reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmoap.methods.base import Payload, RunContext, Server
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import PromptClient, PromptMethod

__all__ = ["FedAMPClient", "FedAMPServer", "FedAMP"]


class FedAMPClient(PromptClient):
    method: "FedAMP"
    shared_params = {"prompt": "ctx"}  # uploaded; downloaded as the cloud model u_i

    cloud: Tensor | None = None
    """u_i of the current round (fixed during local training)."""
    prox_weight: float = 0.0
    """lam / (2 alpha_k) of the current round."""

    def reset(self, cid: int) -> None:
        super().reset(cid)
        self.cloud, self.prox_weight = None, 0.0

    def receive(self, payload: Payload) -> None:
        self.cloud = payload["prompt"].to(self.ctx.device, self.ctx.dtype).clone()
        self.prox_weight = float(payload["prox_weight"])
        if self.method.amp_init == "u":
            self.load_shared(payload)

    def prepare_eval(self, payload: Payload) -> None:
        if self.fresh:  # never trained: what it would start from; else its own w_i
            self.load_shared(payload)

    def proximal(self) -> Tensor:
        """``lam / (2 alpha_k) * ||w - u_i||^2`` on the live parameter."""
        if self.cloud is None:
            return self.ctx.new_zeros(())
        return self.prox_weight * (self.ctx - self.cloud).square().sum()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        return F.cross_entropy(self(batch), batch["label"]) + self.proximal()


class FedAMPServer(Server):
    method: "FedAMP"

    def __init__(self, method: "FedAMP", init: Payload, run: RunContext) -> None:
        super().__init__(method, init, run)
        self.prompts: dict[int, Tensor] = {}
        """Each client's last uploaded prompt."""

    def message_weights(self, cid: int) -> tuple[list[int], Tensor, float]:
        """(other client ids j, xi_ij for them, alpha_k) for client ``cid``; xi_ii = 1 - sum."""
        m = self.method
        others = sorted(j for j in self.prompts if j != cid)
        if not others:
            return [], torch.zeros(0, dtype=torch.float64), m.alpha
        own = self.prompts.get(cid, self.init["prompt"]).flatten().double()
        w = torch.stack([self.prompts[j].flatten() for j in others]).double()
        if m.variant == "heuristic":
            cos = F.cosine_similarity(w, own.unsqueeze(0), dim=1)
            return others, (1 - m.xi) * torch.softmax(m.sigma_h * cos, dim=0), m.alpha
        d = (w - own).square().sum(1)
        sigma = self.auto_sigma(own, w) if m.sigma == "auto" else float(m.sigma)
        grad = torch.exp(-d / sigma) / sigma  # A'(d_ij)
        alpha = min(m.alpha, 1.0 / float(grad.sum())) if float(grad.sum()) > 0 else m.alpha
        return others, alpha * grad, alpha

    @staticmethod
    def auto_sigma(own: Tensor, others: Tensor) -> float:
        """Median of the positive squared distances between all the prompts involved (1.0 if
        they are all equal, when the weights do not matter)."""
        every = torch.cat([own.unsqueeze(0), others])
        d = torch.cdist(every, every).square()
        d = d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)]
        d = d[d > 0]
        return float(d.median()) if len(d) else 1.0

    def cloud(self, cid: int) -> tuple[Tensor, float]:
        """(u_i, alpha_k) for client ``cid``."""
        own = self.prompts.get(cid, self.init["prompt"])
        others, xi, alpha = self.message_weights(cid)
        u = (1 - xi.sum()) * own.double()
        for j, x in zip(others, xi):
            u = u + x * self.prompts[j].double()
        return u.to(own.dtype), alpha

    def payload(self, cid: int, t: int) -> Payload:
        u, alpha = self.cloud(cid)
        return {"prompt": u, "prox_weight": torch.tensor(self.method.lam / (2 * alpha))}

    def eval_payload(self, cid: int) -> Payload:
        return {"prompt": self.cloud(cid)[0]}

    def unseen_payload(self, cid: int, upload: Payload | None = None) -> Payload:
        """A client with no prompt of its own: the unweighted mean of the clients' prompts w_i
        (the initial prompt before any upload) as its model and its cloud model, the proximal
        weight at the unclamped alpha."""
        init = self.init["prompt"]
        mean = (
            torch.stack([self.prompts[j].double() for j in sorted(self.prompts)]).mean(0).to(init.dtype)
            if self.prompts
            else init.clone()
        )
        return {"prompt": mean, "prox_weight": torch.tensor(self.method.lam / (2 * self.method.alpha))}

    def aggregate(self, t: int, uploads: dict[int, Payload], weights: dict[int, int]) -> None:
        for cid, up in uploads.items():
            self.prompts[cid] = up["prompt"].clone()

    def state_dict(self) -> dict:
        return {"prompts": dict(self.prompts)}

    def load_state_dict(self, state: dict) -> None:
        self.prompts = {int(k): v for k, v in state["prompts"].items()}


@dataclass
class FedAMP(PromptMethod):
    """PromptFL+FedAMP (Huang et al., 2021): each client keeps its own prompt, pulled toward a
    personalised cloud model (attentive or heuristic weighting of the others' prompts)."""

    name = "fedamp"
    client_class = FedAMPClient
    server_class = FedAMPServer
    declares = replace(PROMPT_LEARNER, server_reads="individual")

    variant: Literal["heuristic", "attentive"] = "heuristic"
    """``heuristic`` (HeurFedAMP: cosine softmax, self weight xi; scale-free, the spec's choice for
    prompts) or ``attentive`` (FedAMP's Gaussian kernel on squared distances, guarded)."""
    lam: float = 1.0
    """lambda: the proximal term is lam / (2 alpha_k) ||w - u_i||^2 (PFLlib's --lamda 1)."""
    alpha: float = 1.0
    """alpha_k, the step of the message passing (PFLlib's --alphaK 1); ``attentive`` clamps it to
    1 / sum_j A'(d_ij) so that xi_ii >= 0."""
    sigma: Union[float, Literal["auto"]] = "auto"
    """``attentive``: sigma of A(x) = 1 - exp(-x / sigma); ``auto`` = the median squared distance
    between the prompts (PFLlib's 1.0 ignores the scale of prompts)."""
    xi: float = 0.5
    """``heuristic``: the self weight xi_ii."""
    sigma_h: float = 10.0
    """``heuristic``: the softmax temperature on cosine similarities (prompts' cosines are close
    to 1, so it must be large to tell them apart)."""
    amp_init: Literal["u", "previous"] = "u"
    """Where local training starts: ``u`` = the cloud model u_i (FedAMP's update), ``previous`` =
    the client's own last prompt (PFLlib)."""

    def problems(self) -> list[str]:
        out = super().problems()
        out += [
            m
            for ok, m in [
                (self.lam >= 0, "method.lam must be >= 0"),
                (self.alpha > 0, "method.alpha must be > 0"),
                (self.sigma == "auto" or float(self.sigma) > 0, "method.sigma must be > 0 or auto"),
                (0 <= self.xi <= 1, "method.xi must be in [0, 1]"),
                (self.sigma_h >= 0, "method.sigma_h must be >= 0"),
            ]
            if not ok
        ]
        return out
