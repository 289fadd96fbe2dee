"""PLOT (Chen et al., ICLR 2023), federated by FedAvg as FLiP does: N prompts per class matched
to the image's patch features by balanced optimal transport.

Client (FLiP's port, ``models/clip/PLOT.py``; PLOT's own repository could not be read): N
class-agnostic contexts P_n; for image b and class c, the patch features f_m (``tokens`` input,
L2-normalised) and the prompts' text features g_cn give ``sim_mn = <f_m, g_cn>``; the entropic
plan T* with uniform marginals (1/M, 1/N) (:func:`~fedmoap.methods.fedotp.transport_plan`,
balanced) is a constant, ``logit_c = s * sum_mn T*_mn sim_mn``. All N prompts are uploaded and
averaged; nothing is personal. With N = 1 (FLiP's run script) the plan is uniform and PLOT is
CoOp's prompt on the mean of the patch features: ``num_prompts`` defaults to PLOT's 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import FedAvgServer, Payload, RunContext
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.fedotp import transport_logits
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod, initial_prompt
from fedmoap.seeding import torch_generator

__all__ = ["PLOTClient", "PLOT"]


class PLOTClient(GlobalPromptClient):
    """N global contexts ``ctx`` (N, n_ctx, W), trained from the download and uploaded."""

    method: "PLOT"
    personal_eval = False

    def __init__(self, method: "PLOT", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        self.ctx = nn.Parameter(torch.zeros(method.num_prompts, *self.ctx.shape))

    def global_init(self) -> Payload:
        """The run's initial prompt first (``ctx_init`` or a draw), then N - 1 further N(0, 0.02)
        draws from the seed, so that no two prompts start alike."""
        first = initial_prompt(self.backbone, self.method, self.run.seed)
        gen = torch_generator(self.run.seed, "plot/prompts")
        rest = torch.randn(self.method.num_prompts - 1, *first.shape, generator=gen) * 0.02
        return {"prompt": torch.cat([first.unsqueeze(0), rest])}

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.ot_logits(batch["tokens"], self.text_features())

    def ot_logits(self, tokens: Tensor, text: Tensor) -> Tensor:
        m = self.method
        return transport_logits(tokens, text, self.backbone.logit_scale, m.eps, 1.0, False, m.max_iter, m.thresh)

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        return self.ot_logits(batch["tokens"], self._eval_cache)


@dataclass
class PLOT(PromptMethod):
    """PLOT (Chen et al., ICLR 2023), federated by FedAvg (FLiP): N prompts per class, matched to
    patch features by balanced entropic optimal transport."""

    name = "plot"
    inputs = frozenset({"tokens"})
    client_class = PLOTClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER
    keep_optimizer_state = False  # FLiP: a fresh optimizer every round

    num_prompts: int = 4
    """N, prompts per class (PLOT's 4; FLiP's script 1, where the transport is uniform)."""
    eps: float = 0.1
    """Entropic regularisation."""
    max_iter: int = 100
    """Maximum Sinkhorn iterations."""
    thresh: float = 1e-2
    """Stop when the mean change of the row scaling is below this."""

    def problems(self) -> list[str]:
        out = super().problems()
        out += [
            m
            for ok, m in [
                (self.num_prompts >= 1, "method.num_prompts must be >= 1"),
                (self.eps > 0, "method.eps must be > 0"),
                (self.max_iter >= 1, "method.max_iter must be >= 1"),
                (self.thresh >= 0, "method.thresh must be >= 0"),
            ]
            if not ok
        ]
        return out
