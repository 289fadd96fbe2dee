"""pFedDC (Zhang et al., 2025, arXiv 2506.21144), **as reconstructed** (the paper's body and code
are not public: every reconstructed choice, marked [R], is a knob).

Client: a global and a local prompt for the text tower (CoOp layout) and for the image tower (VPT
tokens), fused per modality by a private cross-attention module (default: the local prompt
queries the global one, residual: ``F = L + Att(L, G)``); the fused text prompt makes the class
text features, the fused vision prompt enters the image tower; logits ``s * cos(v(x), t_c)``,
cross-entropy, all parts trained jointly by SGD. Shallow prompts by default; ``vision_depth`` /
``text_depth`` J > 1 give per-layer G, L and fusion (text: open_clip towers only).

Server: FedAvg (weighted by training-set size) of the global prompts, which are all a client
uploads; local prompts, fusion modules and their optimizer state never leave it.

A never-trained (held-out) client is evaluated with the global prompts alone (F = G; [G; G] where
a fused prompt is two prompts wide), what a newcomer downloads: its local prompts and fusion
modules would be its random initialisation. Adapting, it starts from that initialisation and
trains everything, as a first-time participant.

With ``vision: false`` and ``fusion: none`` (F = G, no local prompt) the client is PromptFL's,
reading cached image features: the same initial prompt, parameter group and results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmoap.aggregate import weighted_mean
from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import FedAvgServer, HeldOut, ParamGroup, Payload, RunContext
from fedmoap.methods.checks import text_depth_problems, vision_prompt_problems
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.fusion import CrossFusion
from fedmoap.methods.optim import cosine
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod
from fedmoap.seeding import derive_seed, torch_generator

__all__ = ["PFedDCClient", "PFedDCServer", "PFedDC"]


class PFedDCClient(GlobalPromptClient):
    """``ctx`` is the global text prompt G_t (input layer), exactly PromptFL's."""

    method: "PFedDC"

    def __init__(self, method: "PFedDC", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        m, n_t = method, self.ctx.shape[0]
        self.local = m.fusion != "none"
        self.personal_eval = self.local  # no private part: evaluation is the server's alone
        if m.fusion_width(n_t) != n_t:  # [G; L] or both directions: a 2m-token text prompt
            self.slots = backbone.prepare_prompts([m.template.format(c) for c in classnames], m.fusion_width(n_t))
        zeros = torch.zeros
        if m.text_depth > 1:
            self.global_text_deep = nn.Parameter(zeros(m.text_depth - 1, n_t, backbone.ctx_width))
        if self.local:
            self.local_text = nn.Parameter(zeros(m.text_depth, n_t, backbone.ctx_width))
        if m.vision:
            shape = (m.vision_depth, m.vision_tokens, backbone.vision_width)
            self.global_vision = nn.Parameter(zeros(shape))
            if self.local:
                self.local_vision = nn.Parameter(zeros(shape))
        if m.fusion == "cross":
            per_layer = 2 if m.fusion_query == "both" else 1
            self.fusion_text = nn.ModuleList(
                CrossFusion(backbone.ctx_width, m.fusion_heads, m.fusion_dim, m.fusion_norm)
                for _ in range(m.text_depth * per_layer)
            )
            if m.vision:
                self.fusion_vision = nn.ModuleList(
                    CrossFusion(backbone.vision_width, m.fusion_heads, m.fusion_dim, m.fusion_norm)
                    for _ in range(m.vision_depth * per_layer)
                )

    # ----- state ------------------------------------------------------------------------------
    def global_init(self) -> Payload:
        """The server-seeded initial global prompts (the text one is PromptFL's)."""
        m, out = self.method, super().global_init()
        n_t = out["prompt"].shape[0]
        if m.text_depth > 1:
            gen = torch_generator(self.run.seed, "pfeddc_global_text_deep")
            out["prompt_deep"] = torch.randn(m.text_depth - 1, n_t, self.backbone.ctx_width, generator=gen) * 0.02
        if m.vision:
            out["vision"] = self._vision_init(torch_generator(self.run.seed, "pfeddc_global_vision"))
        return out

    def _vision_init(self, gen: torch.Generator) -> Tensor:
        m, width = self.method, self.backbone.vision_width
        shape = (m.vision_depth, m.vision_tokens, width)
        if m.vision_init == "normal":
            return torch.randn(shape, generator=gen) * 0.02
        bound = math.sqrt(6.0 / (3 * 16 * 16 + width))  # VPT's Xavier bound (16-px patches)
        return torch.rand(shape, generator=gen) * (2 * bound) - bound

    def reset(self, cid: int) -> None:
        """Global prompts from the server's initialisation; local prompts and fusion modules
        from (seed, cid)."""
        self.receive(self.global_init())
        if not self.local:
            return
        m, seed = self.method, self.run.seed
        with torch.no_grad():
            if m.ctx_init:  # the same words start the local prompt of every layer
                self.local_text.copy_(self.ctx.detach().expand_as(self.local_text))
            else:
                gen = torch_generator(seed, "pfeddc_local_text", cid)
                self.local_text.copy_(torch.randn(self.local_text.shape, generator=gen) * 0.02)
            if m.vision:
                self.local_vision.copy_(self._vision_init(torch_generator(seed, "pfeddc_local_vision", cid)))
        if m.fusion == "cross":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(seed, "pfeddc_fusion", cid))
                for module in self.fusion_modules():
                    module.reset_parameters()

    def prepare_unseen(self, held: HeldOut) -> None:
        """The global prompts alone (what a newcomer downloads), not random private parts: each
        local prompt is set so that fusion gives back the global one (zero for ``sum``, G
        otherwise) and the fusion modules' output projections to zero, so F = G, or [G; G] where
        the fused prompt is two prompts wide (``concat``, ``fusion_query: both``)."""
        self.prepare_eval(held.download(None))
        if not self.local:
            return
        m = self.method
        keep = 0.0 if m.fusion == "sum" else 1.0
        with torch.no_grad():
            for j, g in enumerate([self.ctx, *(self.global_text_deep if m.text_depth > 1 else [])]):
                self.local_text[j].copy_(keep * g)
            if m.vision:
                self.local_vision.copy_(keep * self.global_vision)
            for module in self.fusion_modules():
                module.o.weight.zero_()
                module.o.bias.zero_()

    def fusion_modules(self) -> list[CrossFusion]:
        return [*getattr(self, "fusion_text", []), *getattr(self, "fusion_vision", [])]

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """Exactly the global prompts (downloaded, uploaded; evaluated with this client's own
        local parts): payload key -> the global prompt it carries."""
        out = {"prompt": self.ctx}
        if self.method.text_depth > 1:
            out["prompt_deep"] = self.global_text_deep
        if self.method.vision:
            out["vision"] = self.global_vision
        return out

    # ----- model ------------------------------------------------------------------------------
    def fuse(self, g: Tensor, l: Tensor | None, modules: nn.ModuleList | None, j: int) -> Tensor:
        """The fused prompt of layer ``j`` from its global ``g`` and local ``l`` (m, W)."""
        m = self.method
        if m.fusion == "none":
            return g
        if m.fusion == "sum":
            return g + l
        if m.fusion == "concat":
            return torch.cat([g, l])
        if m.fusion_query == "local":
            return modules[j](l, g)
        if m.fusion_query == "global":
            return modules[j](g, l)
        return torch.cat([modules[2 * j](l, g), modules[2 * j + 1](g, l)])

    def text_features(self, ctx: Tensor | None = None) -> Tensor:
        """(C, D) L2-normalised class text features of the fused text prompt."""
        m = self.method
        if ctx is not None:
            return super().text_features(ctx)
        g = [self.ctx, *(self.global_text_deep if m.text_depth > 1 else [])]
        layers = [
            self.fuse(g[j], self.local_text[j] if self.local else None, getattr(self, "fusion_text", None), j)
            for j in range(m.text_depth)
        ]
        if m.text_depth == 1:
            return F.normalize(self.backbone.encode_prompts(self.slots, layers[0]), dim=-1)
        return F.normalize(self.backbone.encode_prompts_deep(self.slots, layers), dim=-1)

    def vision_prompts(self) -> dict[int, Tensor]:
        """The fused vision prompt as one group: block -> tokens."""
        modules = getattr(self, "fusion_vision", None)
        return {
            j: self.fuse(self.global_vision[j], self.local_vision[j] if self.local else None, modules, j)
            for j in range(self.method.vision_depth)
        }

    def image_logits(self, batch: dict[str, Tensor], text: Tensor, vision: dict[int, Tensor] | None) -> Tensor:
        if vision is None:  # vision prompts off: the cached features, PromptFL's logits
            return self.logits(batch, text)
        image = F.normalize(self.backbone.encode_image_prompted(batch["pixels"], [vision]), dim=-1)
        return self.backbone.logit_scale * image @ text.t()

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.image_logits(batch, self.text_features(), self.vision_prompts() if self.method.vision else None)

    def eval_state(self) -> tuple[Tensor, dict[int, Tensor] | None]:
        """The fusion is input-independent: fused prompts and text features once per client."""
        return self.text_features(), (self.vision_prompts() if self.method.vision else None)

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        return self.image_logits(batch, *self._eval_cache)

    # ----- optimisation -----------------------------------------------------------------------
    def param_groups(self) -> list[ParamGroup]:
        """One SGD group (PromptFL's when nothing but G_t exists); with ``fusion_lr`` or the
        two-stage schedule: the global prompts, then the private parts."""
        m, lr = self.method, self.run.train.lr
        glob = list(self.shared_parameters().values())
        prompts = [
            *glob,
            *([self.local_text] if self.local else []),
            *([self.local_vision] if self.local and m.vision else []),
        ]
        fusion = [p for module in self.fusion_modules() for p in module.parameters()]
        if m.schedule == "two_stage":
            return [ParamGroup(glob, lr), ParamGroup(prompts[len(glob) :] + fusion, m.fusion_lr or lr)]
        if m.fusion_lr is not None and fusion:
            return [ParamGroup(prompts, lr), ParamGroup(fusion, m.fusion_lr)]
        return [ParamGroup(prompts + fusion, lr)]

    def configure_optimizers(self) -> dict | None:
        built = super().configure_optimizers()
        if self.method.schedule != "two_stage":
            return built
        epochs = self.schedule_epochs()
        first = max(1, epochs // 2)  # epochs of stage 1 (global prompts only)
        by_round = self.round_factor()

        def stage(group: int):
            def factor(epoch: int) -> float:
                on = (epoch < first) == (group == 0)
                return cosine(epoch, epochs, by_round) if on else 0.0

            return factor

        optimizer = built["optimizer"]
        built["lr_scheduler"]["scheduler"] = torch.optim.lr_scheduler.LambdaLR(optimizer, [stage(0), stage(1)])
        return built


class PFedDCServer(FedAvgServer):
    """FedAvg of the global prompts, by training-set size (or uniformly)."""

    method: "PFedDC"

    def aggregate(self, t: int, uploads: dict[int, Payload], weights: dict[int, int]) -> None:
        if self.method.agg_weights == "uniform":
            weights = {cid: 1 for cid in uploads}
        if uploads:
            self.global_state = {**self.global_state, **weighted_mean(uploads, weights, self.global_state)}


@dataclass
class PFedDC(PromptMethod):
    """pFedDC (Zhang et al., 2025; reconstruction): global + local text and vision prompts fused
    per modality by private cross-attention, only the global prompts FedAvg'd."""

    name = "pfeddc"
    inputs = frozenset({"pixels"})
    client_class = PFedDCClient
    server_class = PFedDCServer
    declares = PROMPT_LEARNER

    vision: bool = True
    """Vision prompts (global + local) in the image tower; false: text prompts only, on cached
    image features (with ``fusion: none`` this is PromptFL)."""
    vision_tokens: int = 8
    """m_v, vision prompt tokens per layer [R]."""
    vision_depth: int = 1
    """1: shallow vision prompts (input only); J > 1: a G, L and fusion per block for the first J
    blocks (MaPLe-style deep, [R] D4)."""
    text_depth: int = 1
    """1: shallow text prompt; J > 1: deep text prompts (open_clip towers only) [R] D4."""
    fusion: Literal["cross", "sum", "concat", "none"] = "cross"
    """How global and local prompts are fused: ``cross`` (cross-attention, [S]), ``sum`` (F = G +
    L: a two-prompt CoOp), ``concat`` (F = [G; L], 2m tokens), ``none`` (F = G: no local prompt,
    no fusion module) [R] D1/D2."""
    fusion_query: Literal["local", "global", "both"] = "local"
    """Which prompt queries the cross-attention: ``local`` (F = L + Att(L, G), default), ``global``
    (F = G + Att(G, L)) or ``both`` (both outputs concatenated: 2m tokens) [R] D1."""
    fusion_heads: int = 8
    """Attention heads of each fusion module [R] D3."""
    fusion_dim: Optional[int] = None
    """Attention width; null = the prompt width (full-width MultiheadAttention), e.g. 128 for a
    lighter private module [R] D3."""
    fusion_norm: bool = False
    """LayerNorm on the attention output with a learnable gain (from 0.1); default: none [R] D3."""
    fusion_lr: Optional[float] = None
    """Learning rate of the fusion modules (null: train.lr, as the prompts) [R]."""
    vision_init: Literal["uniform", "normal"] = "uniform"
    """Vision prompts' initialisation: VPT's U(-a, a), a = sqrt(6 / (3 * 16 * 16 + width)), or
    N(0, 0.02^2) [R]."""
    schedule: Literal["joint", "two_stage"] = "joint"
    """``joint``: everything trained together by one optimizer; ``two_stage``: the first half of
    the local epochs (at least one) trains the global prompts, the rest the local prompts and
    fusion modules (lr 0 for the other group) [R] D7."""
    agg_weights: Literal["size", "uniform"] = "size"
    """FedAvg weights of the global prompts: training-set size ([S]) or uniform [R] D8."""

    def fusion_width(self, n: int) -> int:
        """Tokens of a fused prompt made of two n-token prompts."""
        doubled = self.fusion == "concat" or (self.fusion == "cross" and self.fusion_query == "both")
        return 2 * n if doubled else n

    def required_inputs(self) -> frozenset[str]:
        return frozenset({"pixels"}) if self.vision else frozenset({"features"})

    def problems(self) -> list[str]:
        out = super().problems()
        out += [
            msg
            for ok, msg in [
                (self.vision_tokens >= 1, "method.vision_tokens must be >= 1"),
                (self.vision_depth >= 1, "method.vision_depth must be >= 1"),
                (self.text_depth >= 1, "method.text_depth must be >= 1"),
                (self.fusion_heads >= 1, "method.fusion_heads must be >= 1"),
                (
                    self.fusion_dim is None
                    or (self.fusion_dim >= 1 and self.fusion_dim % max(self.fusion_heads, 1) == 0),
                    "method.fusion_dim must be a positive multiple of method.fusion_heads, or null",
                ),
                (self.fusion_lr is None or self.fusion_lr > 0, "method.fusion_lr must be > 0 or null"),
                (
                    self.schedule == "joint" or self.fusion != "none",
                    "method.schedule two_stage needs local prompts (method.fusion other than none)",
                ),
            ]
            if not ok
        ]
        return out

    def backbone_problems(self, backbone: Backbone) -> list[str]:
        out = []
        if self.vision:
            out += vision_prompt_problems(
                "pfeddc", backbone, "vision_depth", self.vision_depth, "; or --method.vision false"
            )
        out += text_depth_problems(backbone, self.text_depth)
        if self.fusion == "cross" and self.fusion_dim is None:
            widths = {backbone.ctx_width} | ({backbone.vision_width} if self.vision else set())
            bad = sorted(w for w in widths if w and w % self.fusion_heads)
            if bad:
                out.append(
                    f"method.fusion_heads {self.fusion_heads} does not divide the prompt "
                    f"width(s) {bad}; set method.fusion_dim"
                )
        return out
