"""The frozen vision-language backbone every method runs on.

A backbone is a frozen CLIP-like model seen through five operations: transform and encode images,
lay out C text prompts with ``n_ctx`` learnable context slots, and encode those prompts for one or
more context tensors at once. Methods never touch the towers themselves, so open_clip models and
the packaged offline model are interchangeable.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["PromptSlots", "Adapter", "Tower", "Backbone", "ToRGB"]


@dataclass
class PromptSlots:
    """Token-level layout of C prompts, each ``prefix + [ctx × n_ctx] + suffix``.

    Built once per (class names, n_ctx) and reused at every step, so tokenisation and the frozen
    token embeddings are never recomputed. Sequences are already cut to the shortest length that
    gives exact results for this set of prompts.
    """

    prefix: Tensor
    """(C, P, W) frozen input embeddings before the context slots (e.g. the start token)."""
    suffix: Tensor
    """(C, S, W) frozen input embeddings after the slots (class name, '.', end token, padding)."""
    n_ctx: int
    """Number of learnable context vectors between prefix and suffix."""
    extra: dict[str, Tensor] = field(default_factory=dict)
    """Backbone-specific tensors (end-token positions, attention masks), indexed by prompt."""

    @property
    def num_prompts(self) -> int:
        return self.prefix.shape[0]

    @property
    def seq_len(self) -> int:
        return self.prefix.shape[1] + self.n_ctx + self.suffix.shape[1]

    def to(self, device: torch.device | str) -> "PromptSlots":
        return PromptSlots(
            self.prefix.to(device), self.suffix.to(device), self.n_ctx, {k: v.to(device) for k, v in self.extra.items()}
        )


Adapter = Callable[[Tensor], Tensor]
"""A residual branch on one transformer block: (..., W) normalised block input -> (..., W), added to
the block's output (:meth:`Backbone.adapted`)."""
Tower = Literal["text", "image"]


class Backbone(nn.Module, ABC):
    """A frozen CLIP-like model. Subclasses set ``embed_dim``, ``ctx_width`` and ``logit_scale``."""

    embed_dim: int
    """Dimension of the joint image-text feature space."""
    ctx_width: int
    """Dimension of one context vector (the text tower's input-embedding width)."""
    logit_scale: float
    """Fixed multiplier of cosine similarities (CLIP's exp(logit_scale), about 100)."""
    image_size: int
    """Side of the square image the image tower takes."""

    def freeze(self) -> "Backbone":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Backbone":
        """A frozen backbone stays in eval mode (batch-norm statistics, dropout) whatever is asked."""
        return super().train(False)

    # ----- images -----------------------------------------------------------------------------
    @abstractmethod
    def image_transform(self, train: bool) -> Callable:
        """PIL image -> normalised tensor. ``train=True`` gives the augmented view (random resized
        crop + flip); its ``repr`` must describe it fully, since it enters feature-cache keys."""

    @abstractmethod
    def encode_image(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, embed_dim) image features, not normalised."""

    # ----- vision prompts (ViT image towers) ----------------------------------------------------
    vision_width: int | None = None
    """Width of the image tower's tokens, or None if the tower takes no prompt tokens (CNNs)."""
    vision_layers: int = 0
    """Number of transformer blocks of the image tower (0 for CNNs)."""

    def vit_embed(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 1 + P, W): [CLS] and patch tokens with their position embeddings,
        before the tower's pre-norm."""
        raise self._no_tokens()

    def vit_pre(self, x: Tensor) -> Tensor:
        """The pre-norm applied to the whole input sequence (prompt tokens included)."""
        raise self._no_tokens()

    def vit_blocks(self) -> Sequence[Callable[[Tensor], Tensor]]:
        """The transformer blocks, each (B, T, W) -> (B, T, W)."""
        raise self._no_tokens()

    def vit_head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Final [CLS] + patch tokens (B, 1 + P, W), prompt tokens removed -> (pooled image feature
        (B, embed_dim), patch tokens in the joint space (B, P, embed_dim)), not normalised."""
        raise self._no_tokens()

    def _no_tokens(self) -> Exception:
        from fedmoap.errors import FedmoapError

        return FedmoapError(
            f"model.arch: the image tower of {self.describe()} is not a vision "
            "transformer and cannot take prompt tokens; use an open_clip ViT "
            "(e.g. ViT-B-16) or packaged-vit"
        )

    def describe(self) -> str:
        """Name of the architecture, for messages."""
        return type(self).__name__

    @property
    def text_context_length(self) -> int:
        """Tokens the text tower takes in one prompt, start and end tokens included."""
        raise NotImplementedError

    def encode_image_prompted(
        self, images: Tensor, prompts: Sequence[Mapping[int, Tensor]] = (), return_tokens: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Image features with learnable prompt tokens inside a ViT image tower.

        ``prompts`` is a list of groups; a group maps block index -> tokens, (n, W) shared by the
        batch or (B, n, W) per sample. A group enters the sequence at its smallest block index,
        appended after [CLS], the patches and the groups already present; each later entry of the
        group *replaces* its tokens before that block (VPT-deep). Tokens for block 0 are appended
        before the pre-norm (VPT-shallow, as IVLP/MaPLe do for CLIP). Prompt tokens never enter
        the pooling. Returns the pooled features (B, embed_dim) and, with ``return_tokens``, the
        patch tokens (B, P, embed_dim) too; neither normalised. With no prompts this is the
        tower's own forward pass.
        """
        if self.vision_width is None:
            raise self._no_tokens()
        unused = sorted({i for group in prompts for i in group} - set(range(self.vision_layers)))
        if unused:
            raise ValueError(f"prompt tokens for blocks {unused}: the tower has {self.vision_layers}")
        x = self.vit_embed(images)
        b, n_base = x.shape[0], x.shape[1]
        where: dict[int, tuple[int, int]] = {}  # group -> (start, length) in the sequence

        def insert(x: Tensor, block: int) -> Tensor:
            for g, group in enumerate(prompts):
                tokens = group.get(block)
                if tokens is None:
                    continue
                tokens = tokens.to(x.dtype)
                tokens = tokens.expand(b, -1, -1) if tokens.dim() == 2 else tokens
                if g in where:
                    start, n = where[g]
                    if tokens.shape[1] != n:
                        raise ValueError(f"prompt group {g}: {tokens.shape[1]} tokens at block {block}, {n} before")
                    x = torch.cat([x[:, :start], tokens, x[:, start + n :]], dim=1)
                else:
                    where[g] = (x.shape[1], tokens.shape[1])
                    x = torch.cat([x, tokens], dim=1)
            return x

        x = self.vit_pre(insert(x, 0))
        for i, block in enumerate(self.vit_blocks()):
            if i:
                x = insert(x, i)
            x = block(x)
        pooled, tokens = self.vit_head(x[:, :n_base])
        return (pooled, tokens) if return_tokens else pooled

    def encode_image_tokens(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, T, embed_dim) per-patch features in the joint space, not normalised
        (what FedOTP-style methods match prompts against). ViTs: the patch tokens after the final
        norm and projection."""
        return self.encode_image_prompted(images, return_tokens=True)[1]

    def pixel_transform(self) -> Callable:
        """PIL image -> (3, S, S) uint8 tensor: the evaluation transform up to the tensor
        conversion (what the pixel cache stores)."""
        from torchvision import transforms as T

        steps = self.image_transform(train=False).transforms
        if not (isinstance(steps[-2], T.ToTensor) and isinstance(steps[-1], T.Normalize)):
            raise TypeError(f"{type(self).__name__}: the eval transform must end with ToTensor, Normalize")
        return T.Compose([*steps[:-2], T.PILToTensor()])

    def normalize_pixels(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) floats in [0, 1] -> the image tower's input (mean/std normalisation)."""
        normalize = self.image_transform(train=False).transforms[-1]
        mean = torch.tensor(normalize.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(normalize.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std

    def image_fingerprint(self) -> str:
        """A digest of everything that determines image features (weights of the image tower)."""
        return _digest_params(self.image_tower_parameters())

    def text_fingerprint(self) -> str:
        """A digest of the text side's weights (by default: every tensor of the backbone)."""
        return _digest_params(list(self.state_dict().values()))

    @abstractmethod
    def image_tower_parameters(self) -> list[Tensor]:
        """Tensors of the image tower, in a fixed order (weights and buffers)."""

    # ----- text -------------------------------------------------------------------------------
    @abstractmethod
    def prepare_prompts(self, texts: list[str], n_ctx: int) -> PromptSlots:
        """Lay out one prompt per text with ``n_ctx`` context slots right after the start token.

        ``texts`` are complete strings (e.g. ``"a photo of a cat."`` with n_ctx = 0, or ``"cat."``
        for CoOp), so ``encode_prompts(prepare_prompts(texts, 0))`` is the zero-shot classifier.
        """

    @abstractmethod
    def embed_tokens(self, text: str) -> Tensor:
        """(n, ctx_width) input embeddings of ``text``'s tokens, without start or end tokens; used
        to initialise context vectors from words (e.g. "a photo of a")."""

    @abstractmethod
    def encode_embeddings(self, embeddings: Tensor, slots: PromptSlots, repeats: int) -> Tensor:
        """Run the text tower on (repeats * C, L, W) input embeddings laid out as ``slots``
        (prompt-major within each repeat) -> (repeats * C, embed_dim), not normalised."""

    def encode_prompts(self, slots: PromptSlots, ctx: Tensor | None = None) -> Tensor:
        """Text features of the C prompts for one or several context tensors.

        ``ctx``: None (n_ctx must be 0), (n_ctx, W) -> (C, D), or (E, n_ctx, W) -> (E, C, D).
        All E experts go through the text tower in a single batch. Not normalised.
        """
        c = slots.num_prompts
        if ctx is None:
            if slots.n_ctx:
                raise ValueError(f"these prompts have {slots.n_ctx} context slots but no ctx was given")
            ctx = slots.prefix.new_zeros(0, slots.prefix.shape[2])
        single = ctx.dim() == 2
        ctx3 = ctx.unsqueeze(0) if single else ctx
        e = ctx3.shape[0]
        if ctx3.shape[1] != slots.n_ctx:
            raise ValueError(f"ctx has {ctx3.shape[1]} vectors, prompts have {slots.n_ctx} slots")
        ctx3 = ctx3.to(slots.prefix.dtype)
        feats = None if self._adapting else self.encode_shared_prefix(slots, ctx3)
        if feats is None:
            x = torch.cat(
                [
                    slots.prefix.unsqueeze(0).expand(e, -1, -1, -1),
                    ctx3.unsqueeze(1).expand(-1, c, -1, -1),
                    slots.suffix.unsqueeze(0).expand(e, -1, -1, -1),
                ],
                dim=2,
            ).reshape(e * c, slots.seq_len, -1)
            feats = self.encode_embeddings(x, slots, e)
        return feats.reshape(c, -1) if single else feats.reshape(e, c, -1)

    def encode_shared_prefix(self, slots: PromptSlots, ctx: Tensor) -> Tensor | None:
        """(E, C, embed_dim) features of ``slots`` with the (E, n_ctx, W) contexts ``ctx``, computing
        the part all C prompts share (prefix + context) once per context tensor; or None where this
        backbone cannot do so exactly, and :meth:`encode_prompts` runs the full sequences."""
        return None

    # ----- deep text prompts (seed-methods: pFedDC's text_depth) --------------------------------
    text_layers: int = 0
    """Blocks of the text tower that :meth:`encode_prompts_deep` can prompt (0: not supported)."""

    def encode_prompts_deep(self, slots: PromptSlots, ctx_layers: Sequence[Tensor]) -> Tensor:
        """MaPLe/IVLP-style deep text prompts: ``ctx_layers[0]`` (n_ctx, W) is the context at the
        input, as in :meth:`encode_prompts`; ``ctx_layers[j]`` replaces the context positions'
        hidden states before block ``j``. (C, D), not normalised. Towers without it refuse."""
        from fedmoap.errors import FedmoapError

        raise FedmoapError(
            f"{self.describe()}: its text tower takes no deep prompts (text_depth > 1 needs an open_clip model)"
        )

    # ----- residual adapters on the blocks (pFedMMA) ------------------------------------------------
    _adapting: int = 0

    def adapter_blocks(self, tower: Tower) -> Sequence[tuple[nn.Module, Callable[[Tensor], Tensor]]]:
        """The transformer blocks of ``tower`` that :meth:`adapted` can hook, in order, each with the
        norm its residual branches read their input through (a pre-norm block's first LayerNorm;
        the identity for a post-norm block, whose input is already the previous block's
        normalised output). Empty for a tower without such blocks (a CNN)."""
        return []

    @contextmanager
    def adapted(
        self, text: Mapping[int, Adapter] | None = None, image: Mapping[int, Adapter] | None = None
    ) -> Iterator[None]:
        """Residual adapters on the blocks of both towers, for whatever is encoded inside the
        context: block j (0-based, of :meth:`adapter_blocks`) with an adapter δ_j computes
        ``x <- block_j(x) + δ_j(norm_j(x))`` from its input x, at every position (prompt tokens
        included). It is a forward hook on the block modules, so every encoding path that runs the
        blocks takes it (``encode_prompts``, ``encode_image``, ``encode_image_prompted``, deep
        prompts); the text path that shares the prompts' common prefix is switched off inside,
        since it does not run the blocks as modules. Adapters returning zeros leave every feature
        exactly as it is without them."""
        text, image = dict(text or {}), dict(image or {})
        hooks = []
        try:
            for tower, adapters in (("text", text), ("image", image)):
                blocks = self.adapter_blocks(tower)
                bad = sorted(set(adapters) - set(range(len(blocks))))
                if bad:
                    raise ValueError(
                        f"adapters for {tower} blocks {bad}: {self.describe()}'s {tower} "
                        f"tower has {len(blocks)} that take them"
                    )
                for j, adapter in adapters.items():
                    module, norm = blocks[j]
                    hooks.append(module.register_forward_hook(_residual_hook(adapter, norm), with_kwargs=True))
            self._adapting += 1
            try:
                yield
            finally:
                self._adapting -= 1
        finally:
            for hook in hooks:
                hook.remove()


def _residual_hook(adapter: Adapter, norm: Callable[[Tensor], Tensor]) -> Callable:
    """A forward hook adding ``adapter(norm(block input))`` to a block's output (a tensor, or the
    first element of a tuple)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, output):
        x = args[0] if args else next(iter(kwargs.values()))
        if isinstance(output, tuple):
            return (output[0] + adapter(norm(x)), *output[1:])
        return output + adapter(norm(x))

    return hook


def _digest_params(tensors: list[Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu")
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        # reshape(-1) gives row-major order whatever the memory format (channels-last, 0-d)
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class ToRGB:
    """PIL image (grayscale, palette, RGBA...) -> 3-channel RGB PIL image; its repr is part of the
    image transforms' text that feature-cache keys hash."""

    def __call__(self, img: Any) -> Any:
        return img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"
