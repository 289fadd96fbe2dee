"""pFedMoAP's attention-based gating network (paper Sec. 4.3, Eq. 11).

For every (image, class) pair the pooled image feature is the query and the pooled text features of
that class from the local expert and the K non-local experts are keys and values. The output is an
enhanced text feature per (image, class). Softmax attention over experts makes the output
independent of the order of the experts, and K may be any number (including 0).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Reduction", "reduce_features", "AttentionGating"]

Reduction = Literal["avg_pool", "strided"]


def reduce_features(x: Tensor, d_out: int, how: Reduction = "avg_pool") -> Tensor:
    """Reduce the last dimension of ``x`` to ``d_out``.

    ``avg_pool`` averages groups of adjacent dimensions (adaptive pooling when d_in is not a
    multiple of d_out) — the paper's "pooling"; ``strided`` keeps every (d_in // d_out)-th
    dimension, as the reference code does.
    """
    d_in = x.shape[-1]
    if d_in == d_out:
        return x
    if how == "strided":
        if d_in % d_out:
            raise ValueError(f"strided reduction needs a feature size ({d_in}) divisible by {d_out}")
        return x[..., :: d_in // d_out]
    if d_in % d_out == 0:
        return x.unflatten(-1, (d_out, d_in // d_out)).mean(-1)
    return F.adaptive_avg_pool1d(x.reshape(-1, 1, d_in), d_out).reshape(*x.shape[:-1], d_out)


class AttentionGating(nn.Module):
    """Multi-head attention with per-class keys/values (4 linear d×d layers: 66.0K parameters at
    d = 128).

    Args:
        d_feature: dimension of the backbone's joint feature space.
        d_gating: dimension the features are reduced to before attention.
        heads: number of attention heads (must divide ``d_gating``).
        reduction: how features are reduced to ``d_gating`` (see :func:`reduce_features`).
        attn_scale: score scale; None means 1/sqrt(d_head) (the paper's MHA), a number fixes it
            (the reference code uses 10.0).
    """

    def __init__(
        self,
        d_feature: int,
        d_gating: int = 128,
        heads: int = 8,
        reduction: Reduction = "avg_pool",
        attn_scale: float | None = None,
    ) -> None:
        super().__init__()
        if d_gating % heads:
            raise ValueError(f"d_gating ({d_gating}) must be divisible by heads ({heads})")
        self.d_feature, self.d_gating, self.heads = d_feature, d_gating, heads
        self.reduction = reduction
        self.scale = attn_scale if attn_scale is not None else 1.0 / math.sqrt(d_gating // heads)
        self.q_proj = nn.Linear(d_gating, d_gating)
        self.k_proj = nn.Linear(d_gating, d_gating)
        self.v_proj = nn.Linear(d_gating, d_gating)
        self.out_proj = nn.Linear(d_gating, d_gating)

    def reset_parameters(self, identity_values: bool = False) -> None:
        """PyTorch's default initialisation of the four projections (the random stream is the
        caller's); with ``identity_values`` the value and output projections start as the
        identity, so the untrained network returns an attention-weighted average of the experts'
        reduced text features instead of a random projection of it."""
        for layer in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            layer.reset_parameters()
        if identity_values:
            with torch.no_grad():
                for layer in (self.v_proj, self.out_proj):
                    layer.weight.copy_(torch.eye(self.d_gating))
                    layer.bias.zero_()

    def reduce(self, x: Tensor) -> Tensor:
        return reduce_features(x, self.d_gating, self.reduction)

    def forward(self, image: Tensor, experts: Tensor) -> Tensor:
        """Enhanced text features.

        Args:
            image: (B, d_feature) image features (the query).
            experts: (E, C, d_feature) text features of E experts (local first, by convention;
                the result does not depend on the order) for C classes.
        Returns:
            (B, C, d_gating) one enhanced text feature per image and class.
        """
        h, dh = self.heads, self.d_gating // self.heads
        q = self.q_proj(self.reduce(image)).unflatten(-1, (h, dh))  # B h dh
        kv = self.reduce(experts)  # E C d
        k = self.k_proj(kv).unflatten(-1, (h, dh))  # E C h dh
        v = self.v_proj(kv).unflatten(-1, (h, dh))
        scores = torch.einsum("bhd,echd->bche", q, k) * self.scale  # B C h E
        attn = scores.softmax(dim=-1)
        out = torch.einsum("bche,echd->bchd", attn, v).flatten(-2)  # B C d
        return self.out_proj(out)
