"""pFedMMA (Ghiasvand, Alizadeh, Pedarsani, ICLR 2026), from its code: multi-modal adapters in
both towers, of which only a small shared projection is federated.

Client (reference: sajjad-ucsb/pFedMMA ``trainers/pFedMMA.py``, ``clip/model.py``, ``clip/gsl.py``;
only the abstract was readable): on text block l and image block l of the adapted ranges (1-based,
paired in order; the reference's 5..12 of ViT-B/16's 12 and 12) a residual branch reads the block's
normalised input x and adds to its output (:meth:`~fedmoap.backbones.base.Backbone.adapted`)::

    delta_l(x) = s * up_l(h_l(down_l(x))),   down_l, h_l: Linear + ReLU,   up_l: Linear

with personal ``down``/``up`` per tower (W -> r -> W, Wv -> r -> Wv) and one shared ``h_l`` (r -> r),
the same module in both towers. The text input is the fixed prompt "a photo of a {}." (nothing
learnable in it); CE on the cosine logits. **Gradient scaling** (``clip/gsl.py``): the branch input
passes GS(x, s) and its output GS(delta, 1/s), GS being the identity forward and a gradient
multiplier backward, so the adapter parameters get the gradient of the unscaled branch while the
forward adds s times it (at s = 1e-3 training would otherwise be about 1000x slower); the gradient
reaching the tower is unchanged. GS here follows the block's norm instead of preceding it: the
norm's backward is linear in the incoming gradient, so the result is the same.

Only the ``h_l`` are uploaded (size-weighted FedAvg); ``down``/``up`` never leave the client. Every
client starts from the same adapters (Kaiming-normal weights, fan-out, zero biases). A client that
never trained has its initial personal adapters and the global ``h_l``: at s = 1e-3 that is close to
zero-shot "a photo of a {}.". Not reproduced: an adapter on the embeddings (the reference's block
index 0, off by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmoap.backbones.base import Adapter, Backbone
from fedmoap.methods.base import ClientModule, FedAvgServer, Method, ParamGroup, Payload, RunContext
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.seeding import torch_generator

__all__ = ["grad_scale", "ModalAdapter", "PFedMMAClient", "PFedMMA"]


class _GradScale(torch.autograd.Function):
    """Identity forward; the gradient times ``factor`` backward."""

    generate_vmap_rule = True  # DP-SGD's per-example vmap

    @staticmethod
    def forward(x: Tensor, factor: float) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.factor = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def grad_scale(x: Tensor, factor: float) -> Tensor:
    """``x`` unchanged; its gradient multiplied by ``factor``."""
    return _GradScale.apply(x, factor)


def _relu_linear(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU())


class ModalAdapter(nn.Module):
    """One tower's personal part on one block: ``down`` (width -> r, ReLU) and ``up`` (r -> width)."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.down, self.up = _relu_linear(width, dim), nn.Linear(dim, width)


def _kaiming(module: nn.Module, gen: torch.Generator) -> None:
    """The reference's init: Kaiming-normal weights (fan-out, ReLU), zero biases."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                layer.bias.zero_()


class PFedMMAClient(ClientModule):
    """Personal text and image adapters, the shared projections (global) and the fixed prompts."""

    method: "PFedMMA"
    shared_params = {"shared": "shared"}  # shared.0.0.weight, ...; down/up stay

    def __init__(self, method: "PFedMMA", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        n, r = method.num_blocks, method.adapter_dim
        self.slots = backbone.prepare_prompts([method.prompt.format(c) for c in classnames], 0)
        with torch.random.fork_rng(devices=[]):  # every value is set in reset, from the run seed
            self.text = nn.ModuleList(ModalAdapter(backbone.ctx_width, r) for _ in range(n))
            self.vision = nn.ModuleList(ModalAdapter(backbone.vision_width, r) for _ in range(n))
            self.shared = nn.ModuleList(_relu_linear(r, r) for _ in range(n))
            """h_l, the same module on text block l and image block l; the only uploaded part."""

    def global_init(self) -> Payload:
        r, n = self.method.adapter_dim, self.method.num_blocks
        with torch.random.fork_rng(devices=[]):
            shared = nn.ModuleList(_relu_linear(r, r) for _ in range(n))
        _kaiming(shared, torch_generator(self.run.seed, "pfedmma/shared"))
        return {f"shared.{k}": v for k, v in shared.state_dict().items()}

    def reset(self, cid: int) -> None:
        """The same initial adapters for every client (from the run seed)."""
        gen = torch_generator(self.run.seed, "pfedmma/personal")
        _kaiming(self.text, gen)
        _kaiming(self.vision, gen)
        self.load_shared(self.global_init())

    def set_classnames(self, classnames: list[str]) -> None:
        """Prompts for ``classnames`` (the adapters are class-agnostic)."""
        self.classnames, self.num_classes = list(classnames), len(classnames)
        self.slots = self.backbone.prepare_prompts([self.method.prompt.format(c) for c in classnames], 0)
        self._eval_cache = None

    # ----- model ------------------------------------------------------------------------------
    def adapters(self, tower: str) -> dict[int, Adapter]:
        """0-based block -> delta_l for ``tower`` ("text" or "image")."""
        m = self.method
        first = (m.text_blocks if tower == "text" else m.vision_blocks)[0] - 1
        personal = self.text if tower == "text" else self.vision
        scaled = m.gradient_scaling and m.scale > 0

        def branch(own: ModalAdapter, shared: nn.Module) -> Adapter:
            def delta(x: Tensor) -> Tensor:
                x = grad_scale(x, m.scale) if scaled else x
                y = own.up(shared(own.down(x))) * m.scale
                return grad_scale(y, 1 / m.scale) if scaled else y

            return delta

        return {first + i: branch(own, h) for i, (own, h) in enumerate(zip(personal, self.shared))}

    def text_features(self) -> Tensor:
        """(C, D) normalised features of the fixed prompts through the adapted text tower."""
        with self.backbone.adapted(text=self.adapters("text")):
            return F.normalize(self.backbone.encode_prompts(self.slots), dim=-1)

    def image_features(self, pixels: Tensor) -> Tensor:
        with self.backbone.adapted(image=self.adapters("image")):
            return F.normalize(self.backbone.encode_image(pixels), dim=-1)

    def logits(self, batch: dict[str, Tensor], text: Tensor) -> Tensor:
        return self.backbone.logit_scale * self.image_features(batch["pixels"]) @ text.t()

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.logits(batch, self.text_features())

    def eval_state(self) -> Tensor:
        return self.text_features()

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        return self.logits(batch, self._eval_cache)

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup(list(self.parameters()), self.run.train.lr)]


@dataclass
class PFedMMA(Method):
    """pFedMMA (Ghiasvand et al., ICLR 2026), from its code: residual adapters in both towers with
    personal down/up projections and a shared middle projection, the only part federated; needs
    transformer blocks in both towers (open_clip ViTs, packaged-vit)."""

    name = "pfedmma"
    inputs = frozenset({"pixels"})
    client_class = PFedMMAClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER

    prompt: str = "a photo of a {}."
    """The fixed text prompt; ``{}`` is the class name."""
    text_blocks: list[int] = field(default_factory=lambda: [5, 12])
    """[first, last] text blocks with adapters, 1-based, inclusive (the reference's 5..12)."""
    vision_blocks: list[int] = field(default_factory=lambda: [5, 12])
    """[first, last] image blocks with adapters, 1-based, inclusive; as many as ``text_blocks``
    (the i-th of each share one projection)."""
    adapter_dim: int = 32
    """r, the adapters' bottleneck width."""
    scale: float = 0.001
    """s, the factor on every adapter's output."""
    gradient_scaling: bool = True
    """Give the adapters the gradient of the unscaled branch (the reference); false: plain autograd
    (the parameters' gradients are s times smaller)."""

    @property
    def num_blocks(self) -> int:
        return self.text_blocks[1] - self.text_blocks[0] + 1

    def problems(self) -> list[str]:
        out = [
            f"method.{knob} must be [first, last] with 1 <= first <= last"
            for knob in ("text_blocks", "vision_blocks")
            if len(getattr(self, knob)) != 2 or not 1 <= getattr(self, knob)[0] <= getattr(self, knob)[1]
        ]
        if not out and self.vision_blocks[1] - self.vision_blocks[0] != self.text_blocks[1] - self.text_blocks[0]:
            out.append(
                f"method.text_blocks {self.text_blocks} and method.vision_blocks "
                f"{self.vision_blocks} must span as many blocks (they share projections)"
            )
        out += [
            m
            for ok, m in [
                (self.adapter_dim >= 1, "method.adapter_dim must be >= 1"),
                (self.scale >= 0, "method.scale must be >= 0"),
                ("{}" in self.prompt, "method.prompt must contain {} for the class name"),
            ]
            if not ok
        ]
        return out

    def backbone_problems(self, backbone: Backbone) -> list[str]:
        out = []
        for tower, knob in (("text", "text_blocks"), ("image", "vision_blocks")):
            have = len(backbone.adapter_blocks(tower))
            if not have:
                return [
                    f"method pfedmma needs transformer blocks in both towers: {backbone.describe()} "
                    f"has none in its {tower} tower (use an open_clip ViT such as ViT-B-16, or packaged-vit)"
                ]
            if getattr(self, knob)[1] > have:
                out.append(
                    f"method.{knob} {getattr(self, knob)}: the {tower} tower of {backbone.describe()} has {have} blocks"
                )
        return out
