"""FedVPT: FedAvg of a visual prompt inside the image tower and a CoOp text prompt.

Client: learnable tokens in the ViT image tower (VPT, Jia et al. 2022; shallow: appended to
[CLS] + patches at the input, deep: a fresh set before each of the first ``vision_depth``
blocks) and a CoOp context in the text tower, trained jointly on cross-entropy over the cosine
logits (the independent vision-language prompting, IVLP, of MaPLe's ablations; ``text_depth``
J > 1 adds IVLP's deep text prompts, fresh context vectors before each of the first J text
blocks, open_clip text towers only). Uploads both. Each client keeps its optimizer momentum between
rounds (the default policy), IVLP included, unlike FLiP's learners (MaPLe, PromptSRC), which reset
it: ``train.optimizer_state: reset`` gives FLiP's.

Server: FedAvg of both prompts, weighted by training-set size. Every client is evaluated with the
global prompts. This is the reference vision-prompt method of the method API: a method that puts
prompts in the image tower declares ``inputs = {"pixels"}`` and calls
:meth:`~fedmoap.backbones.base.Backbone.encode_image_prompted`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone
from fedmoap.config.flags import ADDED
from fedmoap.methods.base import FedAvgServer, ParamGroup, Payload, RunContext
from fedmoap.methods.checks import text_depth_problems, vision_prompt_problems
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod
from fedmoap.seeding import torch_generator

__all__ = ["FedVPTClient", "FedVPT"]


class FedVPTClient(GlobalPromptClient):
    method: "FedVPT"
    personal_eval = False

    def __init__(self, method: "FedVPT", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        if method.vision_depth:  # 0 only in subclasses: text prompts alone (PromptSRC as FLiP runs it)
            self.vision = nn.Parameter(torch.zeros(method.vision_depth, method.vision_tokens, backbone.vision_width))
        if method.text_depth > 1:
            self.deep_text = nn.Parameter(torch.zeros(method.text_depth - 1, *self.ctx.shape))
            """IVLP's deep text prompts P_1..P_{J-1}, each replacing the context before its block."""

    def global_init(self) -> Payload:
        m = self.method
        out = super().global_init()
        if m.vision_depth:
            gen = torch_generator(self.run.seed, "initial_vision_prompt")
            out["vision"] = (
                torch.randn(m.vision_depth, m.vision_tokens, self.backbone.vision_width, generator=gen)
                * m.vision_init_std
            )
        if m.text_depth > 1:
            gen = torch_generator(self.run.seed, "initial_deep_text_prompt")
            out["deep_text"] = torch.randn(m.text_depth - 1, *out["prompt"].shape, generator=gen) * 0.02
        return out

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """The text context, the visual prompt and (J > 1) the deep text prompts."""
        deep = {"deep_text": self.deep_text} if self.method.text_depth > 1 else {}
        vision = {"vision": self.vision} if self.method.vision_depth else {}
        return {"prompt": self.ctx, **vision, **deep}

    def reset(self, cid: int) -> None:
        self.load_shared(self.global_init())

    def upload(self) -> Payload:
        """Every shared prompt; the visual prompt alone if the text is not trained."""
        if not self.method.train_text:
            return {"vision": self.vision.detach().cpu().clone()} if self.method.vision_depth else {}
        return super().upload()

    def text_features(self, ctx: Tensor | None = None) -> Tensor:
        if self.method.text_depth == 1 or ctx is not None:
            return super().text_features(ctx)
        return F.normalize(self.backbone.encode_prompts_deep(self.slots, [self.ctx, *self.deep_text]), dim=-1)

    def image_features(self, pixels: Tensor) -> Tensor:
        """L2-normalised features of the images with this client's visual prompt."""
        groups = [{layer: self.vision[layer] for layer in range(self.method.vision_depth)}]
        return F.normalize(self.backbone.encode_image_prompted(pixels, groups), dim=-1)

    def logits(self, batch: dict[str, Tensor], text: Tensor) -> Tensor:
        return self.backbone.logit_scale * self.image_features(batch["pixels"]) @ text.t()

    def param_groups(self) -> list[ParamGroup]:
        deep = [self.deep_text] if self.method.text_depth > 1 else []
        vision = [self.vision] if self.method.vision_depth else []
        params = [self.ctx, *deep, *vision] if self.method.train_text else vision
        return [ParamGroup(params, self.run.train.lr)]


@dataclass
class FedVPT(PromptMethod):
    """FedVPT: FedAvg of a visual prompt (VPT, shallow or deep) in a ViT image tower and a CoOp
    text prompt; needs a ViT backbone (open_clip ViT-*, packaged-vit)."""

    name = "fedvpt"
    inputs = frozenset({"pixels"})
    client_class = FedVPTClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER

    vision_tokens: int = 8
    """Visual prompt tokens per layer."""
    vision_depth: int = 1
    """1: shallow VPT (tokens at the input only); J > 1: deep VPT over the first J blocks."""
    vision_init_std: float = 0.02
    """Standard deviation of the visual prompt's normal initialisation (same for all clients)."""
    text_depth: int = field(default=1, metadata=ADDED)
    """1: the CoOp context at the input only; J > 1: IVLP's deep text prompts over the first J text
    blocks (open_clip text towers). The optimizer state is kept between rounds, where FLiP's
    learners reset it (``train.optimizer_state: reset``)."""
    train_text: bool = True
    """Also train (and upload) the CoOp text context; False keeps it at its initialisation
    (e.g. ``ctx_init: a photo of a``) and uploads the visual prompt only."""

    def problems(self) -> list[str]:
        out = super().problems()
        if self.vision_tokens < 1:
            out.append("method.vision_tokens must be >= 1")
        if self.vision_depth < 1:
            out.append("method.vision_depth must be >= 1")
        if self.text_depth < 1:
            out.append("method.text_depth must be >= 1")
        return out

    def backbone_problems(self, backbone: Backbone) -> list[str]:
        return vision_prompt_problems(self.name, backbone, "vision_depth", self.vision_depth) + text_depth_problems(
            backbone, self.text_depth
        )
