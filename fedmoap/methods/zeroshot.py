"""Zero-shot CLIP: hand-written prompts ("a photo of a {}."), nothing trained or sent."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import ClientModule, Method, RunContext, Server
from fedmoap.methods.declarations import PROMPT_LEARNER

__all__ = ["ZeroShotClient", "ZeroShot"]


class ZeroShotClient(ClientModule):
    """Cosine classifier over the text features of the hand-written prompts."""

    personal_eval = False

    def __init__(self, method: "ZeroShot", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        self.slots = backbone.prepare_prompts([method.prompt.format(c) for c in classnames], 0)

    def set_classnames(self, classnames: list[str]) -> None:
        self.classnames, self.num_classes = list(classnames), len(classnames)
        self.slots = self.backbone.prepare_prompts([self.method.prompt.format(c) for c in classnames], 0)
        self._eval_cache = None

    def text_features(self) -> Tensor:
        return F.normalize(self.backbone.encode_prompts(self.slots), dim=-1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.backbone.logit_scale * batch["features"] @ self.text_features().t()

    def eval_state(self) -> Tensor:
        return self.text_features()

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        return self.backbone.logit_scale * batch["features"] @ self._eval_cache.t()


@dataclass
class ZeroShot(Method):
    """Zero-shot CLIP (Radford et al., 2021): hand-written prompts, nothing trained or sent."""

    name = "zeroshot"
    trains = False
    client_class = ZeroShotClient
    server_class = Server
    declares = PROMPT_LEARNER

    prompt: str = "a photo of a {}."
    """The hand-written prompt; ``{}`` is the class name."""

    def problems(self) -> list[str]:
        return [] if "{}" in self.prompt else ["method.prompt must contain {} for the class name"]
