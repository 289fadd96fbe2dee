"""The frozen vision-language backbone every method runs on.

A backbone is a frozen CLIP-like model seen through five operations: transform and encode images,
lay out C text prompts with ``n_ctx`` learnable context slots, and encode those prompts for one or
more context tensors at once. Methods never touch the towers themselves, so open_clip models and
the packaged offline model are interchangeable.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn


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
            self.prefix.to(device), self.suffix.to(device), self.n_ctx,
            {k: v.to(device) for k, v in self.extra.items()},
        )


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

    def image_fingerprint(self) -> str:
        """A digest of everything that determines image features (weights of the image tower)."""
        return _digest_params(self.image_tower_parameters())

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
        feats = self.encode_shared_prefix(slots, ctx3)
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


def _digest_params(tensors: list[Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu")
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        # reshape(-1) gives row-major order whatever the memory format (channels-last, 0-d)
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
