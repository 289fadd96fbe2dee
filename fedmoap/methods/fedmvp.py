"""FedMVP (Singha et al., ICCV 2025), from its code: a PromptFormer, shared by FedAvg, turns an
image's patch embeddings and the classes' attribute sentences into visual prompts for the frozen
image tower; classes are scored by their attribute sentences.

Client (reference: mainaksingha01/FedMVP ``model/FedMVP.py``, ``model/descriptors.py``,
``federated/client.py``; only the abstract was readable): every class c has M_c sentences
``"{prefix} {name}, {suffix}which has|is {attribute}"`` (the reference's rule) from an attribute
file (``attributes``: JSON, class name -> phrases; a class without phrases gets ``"{prefix}
{name}."``), with frozen normalised text features d_{c,m}. PromptFormer, from the patch embeddings
x_p (P x Wv, after the position embedding, before the pre-norm) and K = V = Linear(D -> Wv)(d)::

    Z = MHA(LN(x_p), LN(K), V)          (4 heads, no residual, values not normalised)
    Z = Z + FF(Z),  FF = LN -> Linear(Wv, 8 Wv) -> GEGLU -> Linear(4 Wv, Wv)
    u = AdaptiveAvgPool_{P -> 4}(Z)      (4 tokens per image, appended at the input)

f = norm(tower(x; u)); logit_c = mean_m s f . d_{c,m}. Loss ``CE + alpha (1 - mean_b cos(f_b,
f0_b))``, f0 the frozen feature of the image flipped horizontally (one coin per batch, p 0.5).
Each participant trains on its own classes (K/V their sentences, other logits masked;
``label_space: own``, learnt in a set-up pass that sends nothing) and uploads the whole
PromptFormer; the server's mean is unweighted. The global model is evaluated, with K/V the
evaluated classes' sentences. Not reproduced: the official client's single optimiser step per
round (after its batch loop, with the last batch's loss), its LoRA stage (a per-process flag once
a client's loss is below 0.5), sentences ordered by the file rather than the labels, and its
77-character truncation of sentences.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone
from fedmoap.errors import FedmoapError
from fedmoap.methods.base import ClientModule, HeldOut, Method, ParamGroup, Payload, RunContext, vision_prompt_problems
from fedmoap.methods.declarations import PROMPT_LEARNER, Declares, reads_class_set
from fedmoap.methods.fedtpg import GEGLUFeedForward, UniformMeanServer
from fedmoap.seeding import derive_seed, torch_generator

__all__ = ["load_attributes", "which_clause", "sentences", "PromptFormer", "FedMVPClient", "FedMVP"]


def load_attributes(path: str) -> dict[str, list[str]]:
    """The attribute file: a JSON object of class name -> list of phrases."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FedmoapError(f"method.attributes: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(a, str) for a in v) for v in data.values()
    ):
        raise FedmoapError(f"method.attributes: {path} must be a JSON object of class name -> list of strings")
    return {k.replace("_", " "): v for k, v in data.items()}


def which_clause(attribute: str) -> str:
    """The reference's ``make_descriptor_sentence``."""
    if attribute.startswith(("a", "an", "used")):
        return f"which is {attribute}"
    if attribute.startswith(("has", "often", "typically", "may", "can")):
        return f"which {attribute}"
    return f"which has {attribute}"


def sentences(
    classnames: list[str], attributes: dict[str, list[str]], prefix: str, suffix: str
) -> tuple[list[str], list[int]]:
    """Every class's sentences, in label order, and the class of each."""
    texts, owner = [], []
    for c, name in enumerate(classnames):
        phrases = attributes.get(name.replace("_", " ")) or []
        own = [f"{prefix} {name}, {suffix}{which_clause(a)}" for a in phrases] or [f"{prefix} {name}."]
        texts += own
        owner += [c] * len(own)
    return texts, owner


class PromptFormer(nn.Module):
    """(B, P, Wv) patch embeddings and (M, D) sentence features -> (B, tokens, Wv) visual prompts."""

    def __init__(self, dim: int, width: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.kv = nn.Linear(dim, width)
        self.norm_q, self.norm_k = nn.LayerNorm(width), nn.LayerNorm(width)
        self.cross = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ff = GEGLUFeedForward(width)
        self.tokens = tokens

    def forward(self, patches: Tensor, texts: Tensor) -> Tensor:
        kv = self.kv(texts.to(self.kv.weight.dtype)).unsqueeze(0).expand(patches.shape[0], -1, -1)
        z = self.cross(self.norm_q(patches), self.norm_k(kv), kv, need_weights=False)[0]
        z = z + self.ff(z)
        return F.adaptive_avg_pool1d(z.transpose(1, 2), self.tokens).transpose(1, 2)


class FedMVPClient(ClientModule):
    """The global PromptFormer; the current label space's frozen sentence features."""

    method: "FedMVP"
    personal_eval = False
    keeps_statistics = True  # the set-up pass records the client's own classes

    def __init__(self, method: "FedMVP", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        self.former = self._new_former()
        self.attributes = load_attributes(method.attributes) if method.attributes else {}
        self.own: Tensor | None = None
        """The current client's classes (label indices), from the set-up pass; None: all."""
        self._texts: tuple[Tensor, Tensor, Tensor] | None = None
        self._steps = 0

    def _new_former(self) -> PromptFormer:
        m, bb = self.method, self.backbone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.run.seed, "fedmvp/promptformer"))
            return PromptFormer(bb.embed_dim, bb.vision_width, m.heads, m.prompt_tokens)

    def global_init(self) -> Payload:
        return {k: v.detach().cpu().clone() for k, v in self._new_former().named_parameters()}

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """All of the PromptFormer, under its own parameter names."""
        return dict(self.former.named_parameters())

    def reset(self, cid: int) -> None:
        self.load_shared(self.global_init())
        self.own = None

    def receive(self, payload: Payload) -> None:
        super().receive(payload)
        self._steps = 0

    def extra_state(self) -> dict[str, Tensor]:
        return {} if self.own is None else {"own": self.own}

    def load_extra_state(self, extra: dict[str, Tensor]) -> None:
        self.own = extra.get("own")

    def statistics(self, batches: Iterable[dict[str, Tensor]]) -> Payload:
        """Records the client's classes; sends the server nothing."""
        self.own = torch.unique(torch.cat([b["label"].cpu() for b in batches]))
        return {}

    def adapt_unseen(self, held: HeldOut) -> None:
        """A newcomer's first training, as every participant's: on its own classes."""
        if self.method.label_space == "own":
            self.own = torch.unique(held.train_labels.cpu())
        super().adapt_unseen(held)

    def set_classnames(self, classnames: list[str]) -> None:
        """Sentences of ``classnames`` (the PromptFormer is class-agnostic)."""
        self.classnames, self.num_classes = list(classnames), len(classnames)
        self._texts, self.own, self._eval_cache = None, None, None

    # ----- model ------------------------------------------------------------------------------
    @property
    def texts(self) -> tuple[Tensor, Tensor, Tensor]:
        """(M, D) normalised frozen sentence features, (M,) their classes and the (M, C) matrix
        averaging each class's sentences (computed once per label space)."""
        if self._texts is None:
            m = self.method
            texts, owner = sentences(self.classnames, self.attributes, m.prefix, m.suffix)
            with torch.no_grad():
                slots = self.backbone.prepare_prompts(texts, 0)
                feats = F.normalize(self.backbone.encode_prompts(slots).float(), dim=-1).to(self.device)
            owner_t = torch.tensor(owner, device=self.device)
            mean = F.one_hot(owner_t, self.num_classes).float()
            self._texts = (feats, owner_t, mean / mean.sum(0))
        return self._texts

    def image_features(self, pixels: Tensor, rows: Tensor | None = None) -> Tensor:
        """(B, D) normalised features under the image's prompts; K/V are the sentences ``rows``
        (default: all)."""
        feats = self.texts[0] if rows is None else self.texts[0][rows]
        with torch.no_grad():
            patches = self.backbone.vit_embed(pixels)[:, 1:]
        prompts = self.former(patches, feats)
        return F.normalize(self.backbone.encode_image_prompted(pixels, [{0: prompts}]), dim=-1)

    def logits(self, image: Tensor) -> Tensor:
        feats, _, mean = self.texts
        return self.backbone.logit_scale * (image @ feats.t().to(image.dtype)) @ mean.to(image.dtype)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        own = self.own if self.method.label_space == "own" else None
        if own is None:
            return self.logits(self.image_features(batch["pixels"]))
        return self._own_logits(batch["pixels"], own)[0]

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        """The whole label space: the global model (no client's own classes)."""
        return self.logits(self.image_features(batch["pixels"]))

    def _own_logits(self, pixels: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
        own = own.to(self.device)
        image = self.image_features(pixels, torch.isin(self.texts[1], own))
        mask = torch.full((self.num_classes,), float("-inf"), device=image.device, dtype=image.dtype)
        mask[own] = 0
        return self.logits(image) + mask, image

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        m, pixels = self.method, batch["pixels"]
        own = self.own if m.label_space == "own" else None
        if own is None:
            image = self.image_features(pixels)
            logits = self.logits(image)
        else:
            logits, image = self._own_logits(pixels, own)
        loss = F.cross_entropy(logits, batch["label"])
        self._steps += 1
        if m.alpha == 0:
            return loss
        gen = torch_generator(self.run.seed, "fedmvp/flip", self.planned_round or 0, self.client_id, self._steps)
        flipped = pixels.flip(-1) if torch.rand((), generator=gen) < m.flip_prob else pixels
        with torch.no_grad():
            frozen = F.normalize(self.backbone.encode_image(flipped), dim=-1)
        return loss + m.alpha * (1 - F.cosine_similarity(image, frozen.to(image.dtype), dim=-1).mean())

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup(list(self.former.parameters()), self.run.train.lr)]


@dataclass
class FedMVP(Method):
    """FedMVP (Singha et al., ICCV 2025), from its code: image-conditioned visual prompts from
    cross-attention over class attribute sentences (a PromptFormer shared by FedAvg), classes
    scored by their sentences; needs a ViT and, for its point, an attribute file."""

    name = "fedmvp"
    inputs = frozenset({"pixels"})
    client_class = FedMVPClient
    server_class = UniformMeanServer
    declares = PROMPT_LEARNER

    attributes: Optional[str] = None
    """JSON file of class name -> attribute phrases (e.g. fedmoap/data/attributes/fashion-mnist.json);
    null: one sentence "{prefix} {name}." per class (a zero-shot head)."""
    prefix: str = "a photo of a"
    """Start of every sentence, before the class name."""
    suffix: str = ""
    """Text after "{name}, " and before the attribute clause (e.g. "a type of food, ")."""
    prompt_tokens: int = 4
    """Visual prompt tokens per image (the reference's 4)."""
    heads: int = 4
    """Attention heads of the PromptFormer."""
    alpha: float = 10.0
    """Weight of the consistency term 1 - cos(f, f0)."""
    flip_prob: float = 0.5
    """Probability that a batch's frozen reference f0 is taken of the flipped images."""
    label_space: Literal["own", "all"] = "own"
    """Training label space: ``own`` (the client's classes: K/V their sentences, other logits
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
            reads_class_set(d, "its classes' sentences key the attention, other logits masked; label_space own")
            if self.label_space == "own"
            else d
        )

    def problems(self) -> list[str]:
        out = [
            msg
            for ok, msg in [
                (self.prompt_tokens >= 1, "method.prompt_tokens must be >= 1"),
                (self.heads >= 1, "method.heads must be >= 1"),
                (self.alpha >= 0, "method.alpha must be >= 0"),
                (0 <= self.flip_prob <= 1, "method.flip_prob must be in [0, 1]"),
            ]
            if not ok
        ]
        if self.attributes and not Path(self.attributes).is_file():
            out.append(f"method.attributes: no such file {self.attributes}")
        return out

    def backbone_problems(self, backbone: Backbone) -> list[str]:
        out = vision_prompt_problems(self.name, backbone, "prompt_tokens", 1)
        if not out and backbone.vision_width % self.heads:
            out.append(f"method.heads {self.heads} must divide the image tower's width {backbone.vision_width}")
        return out
