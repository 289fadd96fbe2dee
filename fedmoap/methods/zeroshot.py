"""Zero-shot CLIP: hand-written prompts ("a photo of a {}."), nothing trained or sent."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from fedmoap.backbones.base import Backbone
from fedmoap.config import RunConfig
from fedmoap.methods.base import ClientModule, Server


class ZeroShotClient(ClientModule):
    trains = False

    def __init__(self, backbone: Backbone, classnames: list[str], cfg: RunConfig) -> None:
        super().__init__(backbone, classnames, cfg)
        template = cfg.prompt.zeroshot_template
        self.slots = backbone.prepare_prompts([template.format(c) for c in classnames], 0)

    def text_features(self) -> Tensor:
        return F.normalize(self.backbone.encode_prompts(self.slots), dim=-1)

    def logits(self, image: Tensor, text: Tensor) -> Tensor:
        return self.backbone.logit_scale * image @ text.t()


ZeroShotServer = Server
