"""pFedPrompt (Guo, Guo, Wang, WWW 2023) -- a labelled **reconstruction**, not the authors' method.

pFedPrompt has no public code (PromptFL#3 asks for it; PromptFolio ships only a ``.pyc`` whose
docstring admits not knowing the method). What is certain from its abstract: a prompt shared by
federated learning ("user consensus in linguistic space") plus a client-local, non-parametric
visual personalisation over locally memorised data. Reconstruction (spec §2.1):

- the shared prompt is PromptFL's (trained locally on cross-entropy of its own logits, averaged);
- each client keeps a Tip-Adapter cache (Zhang et al., 2022) of its own few-shot training
  features: keys K_i = the L2-normalised image features it trained on in its latest round, values
  L_i = their one-hot labels; the cache never leaves the client;
- logits = ``s * cos(I, T(P)) + alpha * exp(-beta * (1 - I K_i^T)) L_i``, alpha = 1, beta = 5.5
  (Tip-Adapter's defaults, not pFedPrompt's, which are unknown). The cache term is added at
  evaluation only: training it against the very samples it stores would teach the prompt nothing.

Each feature seen during a round's local training enters the cache once per distinct value
(the plain view, and the augmented views drawn, if ``data.num_views`` > 0), weighted
1 / local epochs, so each training image's total weight is 1 (with plain features only this is
exactly Tip-Adapter's cache).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import ClientModule, FedAvgServer, HeldOut, Payload, RunContext
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod

__all__ = ["PFedPromptClient", "PFedPrompt"]


class PFedPromptClient(GlobalPromptClient):
    method: "PFedPrompt"
    personal_eval = True  # the cache is the client's own

    def __init__(self, method: "PFedPrompt", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        self.cache_keys: Tensor | None = None
        """(M, D) L2-normalised training features of the latest round."""
        self.cache_values: Tensor | None = None
        """(M, C) their labels, one-hot, weighted 1 / (epochs of the training) per occurrence."""
        self._seen: list[tuple[Tensor, Tensor]] = []

    pure_training_step = False  # training_step records the features it sees

    def reset(self, cid: int) -> None:
        super().reset(cid)
        self.cache_keys = self.cache_values = None
        self._seen = []

    def receive(self, payload: Payload) -> None:
        super().receive(payload)
        self._seen = []

    def adapt_unseen(self, held: HeldOut) -> None:
        """A first-time participant's round; the features it saw become its cache (as when a
        participant's state is kept)."""
        super().adapt_unseen(held)
        if self._seen:
            self._build_cache()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        self._seen.append((batch["features"].detach().float().cpu(), batch["label"].cpu()))
        return super().training_step(batch, batch_idx)

    def _build_cache(self) -> None:
        feats = torch.cat([f for f, _ in self._seen])
        labels = torch.cat([y for _, y in self._seen])
        keys, where = torch.unique(feats, dim=0, return_inverse=True)
        values = torch.zeros(len(keys), self.num_classes)
        values.index_add_(0, where, F.one_hot(labels, self.num_classes).float())
        self.cache_keys, self.cache_values = keys, values / self.schedule_epochs()
        self._seen = []

    def extra_state(self) -> dict[str, Tensor]:
        if self._seen:  # the round's training just ended: its features become the cache
            self._build_cache()
        if self.cache_keys is None:
            return {}
        return {"cache_keys": self.cache_keys, "cache_values": self.cache_values}

    def load_extra_state(self, extra: dict[str, Tensor]) -> None:
        self.cache_keys, self.cache_values = extra.get("cache_keys"), extra.get("cache_values")
        self._seen = []

    # the cache's one-hot values are columns of the training label space: no other class names
    set_classnames = ClientModule.set_classnames

    def cache_logits(self, features: Tensor) -> Tensor:
        """(B, C): ``alpha * exp(-beta * (1 - I K^T)) L`` (zero without a cache)."""
        if self.cache_keys is None:
            return features.new_zeros(len(features), self.num_classes)
        keys = self.cache_keys.to(features.device, features.dtype)
        affinity = features @ keys.t()
        m = self.method
        return (
            m.cache_alpha
            * torch.exp(-m.cache_beta * (1 - affinity))
            @ self.cache_values.to(features.device, features.dtype)
        )

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        return super().predict(batch) + self.cache_logits(batch["features"])


@dataclass
class PFedPrompt(PromptMethod):
    """pFedPrompt (reconstruction; Guo et al., 2023): PromptFL's shared prompt plus a private
    Tip-Adapter cache of each client's few-shot training features, added at evaluation."""

    name = "pfedprompt"
    client_class = PFedPromptClient
    server_class = FedAvgServer
    declares = replace(
        PROMPT_LEARNER, keeps_records="a Tip-Adapter cache of its training features, added to its logits at evaluation"
    )

    cache_alpha: float = 1.0
    """alpha: weight of the cache logits (Tip-Adapter's default)."""
    cache_beta: float = 5.5
    """beta: sharpness of the cache affinities exp(-beta (1 - cos)) (Tip-Adapter's default)."""

    def problems(self) -> list[str]:
        out = super().problems()
        if self.cache_alpha < 0:
            out.append("method.cache_alpha must be >= 0")
        if self.cache_beta < 0:
            out.append("method.cache_beta must be >= 0")
        return out
