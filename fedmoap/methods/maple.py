"""MaPLe (Khattak et al., CVPR 2023), federated by FedAvg as FLiP does: multi-modal prompts whose
vision prompts are projections of the text prompts.

Client (reference: muzairkhattak/multimodal-prompt-learning ``trainers/maple.py``): text context
P_0 (n x W, from ``init_words``) and deep text prompts P_1..P_{J-1} (N(0, 0.02^2)); the vision
prompts are ``U_j = F_j(P_j)`` with linear maps F_j: W -> Wv (F_1..F_{J-1} start as copies of one
freshly initialised layer, F_0 is its own); the class prompt is "P_0 of a {name}." (``template``).
P_j replaces the text context before text block j; U_0 is appended to the image tokens at the
input and U_j replaces them before block j. Loss CE on the cosine logits. Every trained tensor
(prompts and maps) is uploaded and averaged (size-weighted); nothing is personal. IVLP, the same
without the coupling, is ``fedvpt`` with ``text_depth``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import FedAvgServer, ParamGroup, Payload, RunContext
from fedmoap.methods.checks import text_depth_problems, vision_prompt_problems
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod
from fedmoap.seeding import derive_seed, torch_generator

__all__ = ["MaPLeClient", "MaPLe"]


class MaPLeClient(GlobalPromptClient):
    """P_0 (``ctx``), P_1..P_{J-1} (``deep_text``) and the maps F_j (``proj``), all global."""

    method: "MaPLe"
    personal_eval = False
    shared_params = {"prompt": "ctx", "deep_text": "deep_text", "proj": "proj"}  # proj.0.weight, ...

    def __init__(self, method: "MaPLe", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        j = method.depth
        self.deep_text = nn.Parameter(torch.zeros(j - 1, *self.ctx.shape))
        first = nn.Linear(backbone.ctx_width, backbone.vision_width)
        self.proj = nn.ModuleList([first, *(copy.deepcopy(first) for _ in range(j - 1))])

    def global_init(self) -> Payload:
        """P_0 from ``init_words`` (its first n tokens; N(0, 0.02^2) past them), P_j and the maps
        from the seed, F_1..F_{J-1} equal (copies of one layer), as the reference does."""
        m, bb = self.method, self.backbone
        gen = torch_generator(self.run.seed, "maple/prompts")
        ctx = torch.randn(m.n_ctx, bb.ctx_width, generator=gen) * 0.02
        if m.init_words:
            words = bb.embed_tokens(m.init_words).detach()[: m.n_ctx]
            ctx[: len(words)] = words
        deep = torch.randn(m.depth - 1, m.n_ctx, bb.ctx_width, generator=gen) * 0.02
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.run.seed, "maple/proj"))
            f0, shared = nn.Linear(bb.ctx_width, bb.vision_width), nn.Linear(bb.ctx_width, bb.vision_width)
        out = {"prompt": ctx, "deep_text": deep}
        for j in range(m.depth):
            layer = f0 if j == 0 else shared
            out[f"proj.{j}.weight"], out[f"proj.{j}.bias"] = layer.weight.detach().clone(), layer.bias.detach().clone()
        return out

    def reset(self, cid: int) -> None:
        self.load_shared(self.global_init())

    def text_prompts(self) -> list[Tensor]:
        return [self.ctx, *self.deep_text]

    def vision_prompts(self) -> dict[int, Tensor]:
        """Block -> U_j = F_j(P_j)."""
        return {j: f(p) for j, (f, p) in enumerate(zip(self.proj, self.text_prompts()))}

    def text_features(self, ctx: Tensor | None = None) -> Tensor:
        if ctx is not None or self.method.depth == 1:
            return super().text_features(ctx)
        return F.normalize(self.backbone.encode_prompts_deep(self.slots, self.text_prompts()), dim=-1)

    def image_features(self, pixels: Tensor) -> Tensor:
        return F.normalize(self.backbone.encode_image_prompted(pixels, [self.vision_prompts()]), dim=-1)

    def logits(self, batch: dict[str, Tensor], text: Tensor) -> Tensor:
        return self.backbone.logit_scale * self.image_features(batch["pixels"]) @ text.t()

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup([self.ctx, self.deep_text, *self.proj.parameters()], self.run.train.lr)]


@dataclass
class MaPLe(PromptMethod):
    """MaPLe (Khattak et al., CVPR 2023), federated by FedAvg (FLiP): deep text prompts whose
    linear projections are the vision prompts; needs a ViT and an open_clip text tower for J > 1."""

    name = "maple"
    inputs = frozenset({"pixels"})
    client_class = MaPLeClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER
    keep_optimizer_state = False  # FLiP: a fresh optimizer every round

    n_ctx: int = 2
    """Prompt tokens per layer, text and vision (MaPLe's 2; FLiP 4)."""
    depth: int = 9
    """J, layers prompted in both towers (MaPLe's 9; FLiP's default 1, shallow)."""
    init_words: Optional[str] = "a photo of a"
    """P_0 starts as the first ``n_ctx`` tokens of these words (MaPLe); null: N(0, 0.02^2)."""
    template: str = "of a {}."
    """Text after the context; ``{}`` is the class name. MaPLe's code tokenises
    "a photo of a {name}." and learns its first n_ctx = 2 tokens, so "of a" stays as text: the
    prompt is "X X of a {name}.". With other ``init_words`` or ``n_ctx``, the words past the
    first ``n_ctx`` tokens ("{}." for random init, as FLiP's ``maple_flip.yaml``)."""

    def problems(self) -> list[str]:
        out = super().problems()
        if self.ctx_init:
            out.append("method.ctx_init: MaPLe initialises from method.init_words (truncated to n_ctx)")
        if self.depth < 1:
            out.append("method.depth must be >= 1")
        return out

    def backbone_problems(self, backbone: Backbone) -> list[str]:
        return vision_prompt_problems("maple", backbone, "depth", self.depth) + text_depth_problems(
            backbone, self.depth, "depth"
        )
