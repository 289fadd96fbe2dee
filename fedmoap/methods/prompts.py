"""The learnable text prompt most methods share: a class-agnostic context in CoOp's layout
``[SOS][ctx x n_ctx][class name][.][EOT]``, encoded by the frozen text tower."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import ClientModule, Method, ParamGroup, Payload, RunContext
from fedmoap.seeding import torch_generator

__all__ = ["PromptMethod", "initial_prompt", "PromptClient", "GlobalPromptClient"]


@dataclass
class PromptMethod(Method):
    """A method with one learnable class-agnostic text context (CoOp layout)."""

    n_ctx: int = 16
    """Learnable context vectors (the paper's 16)."""
    ctx_init: Optional[str] = None
    """Initialise the context from these words (n_ctx then = their token count); null = N(0, 0.02)."""
    template: str = "{}."
    """Text after the context; ``{}`` is the class name."""

    def problems(self) -> list[str]:
        out = []
        if self.n_ctx < 1 and not self.ctx_init:
            out.append("method.n_ctx must be >= 1")
        if "{}" not in self.template:
            out.append("method.template must contain {} for the class name")
        return out

    def context_problems(self, backbone: Backbone) -> list[str]:
        """Whether the context fits the text tower's context length next to the start and end
        tokens and at least one token of text (a longer class name is caught when the prompts
        are laid out)."""
        n = len(backbone.embed_tokens(self.ctx_init)) if self.ctx_init else self.n_ctx
        limit = backbone.text_context_length
        if n + 3 <= limit:
            return []
        knob = f"method.ctx_init ({n} tokens)" if self.ctx_init else f"method.n_ctx {n}"
        return [
            f"{knob} does not fit {backbone.describe()}'s {limit}-token text context "
            f"(at most {limit - 3} context tokens, next to the start, end and class-name tokens)"
        ]


def initial_prompt(backbone: Backbone, method: PromptMethod, seed: int) -> Tensor:
    """The run's initial context: the embedded ``ctx_init`` words, or N(0, 0.02) from the seed."""
    if method.ctx_init:
        return backbone.embed_tokens(method.ctx_init).detach().clone()
    gen = torch_generator(seed, "initial_prompt")
    return torch.randn(method.n_ctx, backbone.ctx_width, generator=gen) * 0.02


class PromptClient(ClientModule):
    """One learnable context ``ctx`` and a cosine classifier over cached image features."""

    method: PromptMethod

    def __init__(self, method: PromptMethod, backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        init = initial_prompt(backbone, method, run.seed)
        self.slots = backbone.prepare_prompts([method.template.format(c) for c in classnames], len(init))
        self.ctx = nn.Parameter(torch.zeros(len(init), backbone.ctx_width))

    def set_classnames(self, classnames: list[str]) -> None:
        """New prompt slots for ``classnames`` (the context is class-agnostic, so it carries over);
        cached evaluation text features are dropped."""
        self.classnames, self.num_classes = list(classnames), len(classnames)
        self.slots = self.backbone.prepare_prompts(
            [self.method.template.format(c) for c in classnames], self.slots.n_ctx
        )
        self._eval_cache = None

    def global_init(self) -> Payload:
        return {"prompt": initial_prompt(self.backbone, self.method, self.run.seed)}

    def reset(self, cid: int) -> None:
        """The context starts as the server's initial prompt."""
        with torch.no_grad():
            self.ctx.copy_(self.global_init()["prompt"])

    def text_features(self, ctx: Tensor | None = None) -> Tensor:
        """(C, D) L2-normalised class text features of ``ctx`` (default: the client's own);
        (E, C, D) for a stack of E contexts."""
        ctx = self.ctx if ctx is None else ctx.to(self.ctx.device)
        return F.normalize(self.backbone.encode_prompts(self.slots, ctx), dim=-1)

    def logits(self, batch: dict[str, Tensor], text: Tensor) -> Tensor:
        return self.backbone.logit_scale * batch["features"] @ text.t()

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.logits(batch, self.text_features())

    def eval_state(self) -> Tensor:
        return self.text_features()

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        return self.logits(batch, self._eval_cache)

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup([self.ctx], self.run.train.lr)]


class GlobalPromptClient(PromptClient):
    """Trains the downloaded global prompt and uploads it (FedAvg of one prompt); evaluated with
    the server's current prompt (and whatever private parts a subclass adds)."""

    shared_params = {"prompt": "ctx"}
