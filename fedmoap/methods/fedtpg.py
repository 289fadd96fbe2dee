"""FedTPG (Qiu et al., ICLR 2024): a text-driven prompt generator learnt by FedAvg, so that the
context of any label space, unseen classes included, is generated from its class names.

Generator (reference: boschresearch/FedTPG ``model/prompt_net.py``, ``model/FedTPG.py``; only the
abstract of the paper was readable): the frozen text features of the bare class names
E = norm(g(name_c)) (C, D) are the keys and values of a cross-attention from learnable queries
Q (n_ctx x W)::

    X = MHA(LN(Q), LN(E), LN(E))            (no residual)
    X = X + FF(X),  FF = LN -> Linear(W, 8W) -> GEGLU -> Linear(4W, W)
    X = X + SA(LN(X)); X = X + FF(X)         (``depth`` more blocks, default none)

and X is the context of CoOp's ``[SOS][ctx][name][.][EOT]`` prompts; cosine logits over cached
image features. Every participant trains the downloaded generator on its own classes (its
label space: K/V are its class names and logits of other classes are masked, ``label_space:
own``, learnt in the set-up pass, which sends the server nothing) and uploads all of it; the
server takes the **unweighted** mean (``weighting: uniform``). Evaluation generates the context
from whatever label space is evaluated; a never-trained client needs nothing but the generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import FedAvgServer, HeldOut, ParamGroup, Payload, RunContext
from fedmoap.methods.declarations import PROMPT_LEARNER, Declares, reads_class_set
from fedmoap.methods.prompts import PromptClient, PromptMethod
from fedmoap.seeding import derive_seed

__all__ = ["GEGLUFeedForward", "PromptGenerator", "FedTPGClient", "UniformMeanServer", "FedTPG"]


class GEGLUFeedForward(nn.Module):
    """LN -> Linear(W, 8W) -> GEGLU -> Linear(4W, W)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 8 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.up(self.norm(x)).chunk(2, dim=-1)
        return self.down(a * F.gelu(gate))


class PromptGenerator(nn.Module):
    """Context (n_ctx, W) from class-name features (C, D) by cross-attention of learnable queries."""

    def __init__(self, n_ctx: int, width: int, dim: int, heads: int, depth: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_ctx, width) * 0.02)
        self.norm_q, self.norm_kv = nn.LayerNorm(width), nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(width, heads, kdim=dim, vdim=dim, batch_first=True)
        self.ff = GEGLUFeedForward(width)
        self.self_norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.self_attn = nn.ModuleList(nn.MultiheadAttention(width, heads, batch_first=True) for _ in range(depth))
        self.self_ff = nn.ModuleList(GEGLUFeedForward(width) for _ in range(depth))

    def forward(self, names: Tensor) -> Tensor:
        kv = self.norm_kv(names.to(self.queries.dtype)).unsqueeze(0)
        x = self.cross(self.norm_q(self.queries).unsqueeze(0), kv, kv, need_weights=False)[0]
        x = x + self.ff(x)
        for norm, attn, ff in zip(self.self_norms, self.self_attn, self.self_ff):
            h = norm(x)
            x = x + attn(h, h, h, need_weights=False)[0]
            x = x + ff(x)
        return x[0]


class FedTPGClient(PromptClient):
    """The global generator; no context parameter of its own."""

    method: "FedTPG"
    personal_eval = False
    keeps_statistics = True  # the set-up pass records the client's own classes

    def __init__(self, method: "FedTPG", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        del self.ctx
        self.generator = self._new_generator()
        self.own: Tensor | None = None
        """The current client's classes (label indices), from the set-up pass; None: all."""
        self._names: Tensor | None = None

    def _new_generator(self) -> PromptGenerator:
        m, bb = self.method, self.backbone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.run.seed, "fedtpg/generator"))
            return PromptGenerator(m.n_ctx, bb.ctx_width, bb.embed_dim, m.heads, m.depth)

    def global_init(self) -> Payload:
        return {k: v.detach().cpu().clone() for k, v in self._new_generator().state_dict().items()}

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """All of the generator, under its own parameter names."""
        return dict(self.generator.named_parameters())

    def reset(self, cid: int) -> None:
        self.load_shared(self.global_init())
        self.own = None

    def extra_state(self) -> dict[str, Tensor]:
        return {} if self.own is None else {"own": self.own}

    def load_extra_state(self, extra: dict[str, Tensor]) -> None:
        self.own = extra.get("own")

    def statistics(self, batches: Iterable[dict[str, Tensor]]) -> Payload:
        """Records the client's classes; sends the server nothing."""
        self.own = torch.unique(torch.cat([b["label"].cpu() for b in batches]))
        return {}

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self._names, self.own = None, None

    def adapt_unseen(self, held: HeldOut) -> None:
        """A newcomer's first training, as every participant's: on its own classes."""
        if self.method.label_space == "own":
            self.own = torch.unique(held.train_labels.cpu())
        super().adapt_unseen(held)

    @property
    def name_features(self) -> Tensor:
        """(C, D) L2-normalised frozen features of the bare class names (computed once)."""
        if self._names is None:
            with torch.no_grad():
                slots = self.backbone.prepare_prompts(list(self.classnames), 0)
                self._names = F.normalize(self.backbone.encode_prompts(slots.to(self.device)).float(), dim=-1)
        return self._names

    def context(self, classes: Tensor | None = None) -> Tensor:
        """(n_ctx, W): the generated context for the label space ``classes`` (default: all)."""
        names = self.name_features if classes is None else self.name_features[classes.to(self.device)]
        return self.generator(names)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        own = self.own if self.method.label_space == "own" else None
        logits = self.logits(batch, self.text_features(self.context(own)))
        if own is not None:
            mask = torch.full((self.num_classes,), float("-inf"), device=logits.device, dtype=logits.dtype)
            mask[own.to(logits.device)] = 0
            logits = logits + mask
        return logits

    def eval_state(self) -> Tensor:
        return self.text_features(self.context())

    def text_features(self, ctx: Tensor | None = None) -> Tensor:
        return F.normalize(self.backbone.encode_prompts(self.slots, ctx), dim=-1)

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup(list(self.generator.parameters()), self.run.train.lr)]


class UniformMeanServer(FedAvgServer):
    """FedAvg with every participant weighted equally (``weighting: uniform``) or by size."""

    def aggregate(self, t: int, uploads: dict[int, Payload], weights: dict[int, int]) -> None:
        if uploads and self.method.weighting == "uniform":
            weights = {cid: 1 for cid in uploads}
        super().aggregate(t, uploads, weights)


@dataclass
class FedTPG(PromptMethod):
    """FedTPG (Qiu et al., ICLR 2024): a prompt generator conditioned on the class names, shared
    by FedAvg; contexts of unseen classes are generated from their names."""

    name = "fedtpg"
    client_class = FedTPGClient
    server_class = UniformMeanServer
    declares = PROMPT_LEARNER

    n_ctx: int = 4
    """Generated context vectors (the reference's 4)."""
    heads: int = 4
    """Attention heads of the generator."""
    depth: int = 0
    """Extra self-attention blocks after the cross-attention (the reference's 0)."""
    label_space: Literal["own", "all"] = "own"
    """Training label space: ``own`` (the client's classes: K/V are their names, other logits
    masked; the reference) or ``all``."""
    weighting: Literal["uniform", "size"] = "uniform"
    """Server mean: ``uniform`` (the reference) or weighted by training-set size."""

    def collects_statistics(self, t: int) -> bool:
        return t == 0 and self.label_space == "own"

    shares_statistics = False

    def declared(self) -> Declares:
        """With ``label_space: own`` each record's loss reads the client's class set
        (:func:`~fedmoap.methods.declarations.reads_class_set`)."""
        d = super().declared()
        return (
            reads_class_set(d, "its class names key the generator and mask the other logits; label_space own")
            if self.label_space == "own"
            else d
        )

    def problems(self) -> list[str]:
        out = super().problems()
        out += [
            m
            for ok, m in [
                (self.heads >= 1, "method.heads must be >= 1"),
                (self.depth >= 0, "method.depth must be >= 0"),
                (not self.ctx_init, "method.ctx_init: FedTPG generates its context (leave it null)"),
            ]
            if not ok
        ]
        return out

    def backbone_problems(self, backbone: Backbone) -> list[str]:
        if backbone.ctx_width % self.heads:
            return [f"method.heads {self.heads} must divide the text width {backbone.ctx_width}"]
        return []
