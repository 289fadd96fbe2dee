"""pFedDC's cross-fusion module: multi-head cross-attention between two prompts of one modality.

``F = Q + Attention(Q W_q, C W_k, C W_v) W_o``: the query prompt ``Q`` (m, W) attends over the
context prompt ``C`` (m', W) token by token, with a residual on ``Q`` (reconstruction, spec
§1.4: no LayerNorm by default, since prompts live in token-embedding space). With the full width
this is ``torch.nn.MultiheadAttention(W, heads)`` (same maths, same initialisation); ``dim`` < W
projects to a narrower attention (a lighter private module, as pFedMoAP's 128-d gating).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CrossFusion"]


class CrossFusion(nn.Module):
    """Residual multi-head cross-attention over prompt tokens (input-independent)."""

    def __init__(self, width: int, heads: int, dim: int | None = None, norm: bool = False) -> None:
        super().__init__()
        dim = dim or width
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.dim = heads, dim
        self.q, self.k, self.v = (nn.Linear(width, dim) for _ in range(3))
        self.o = nn.Linear(dim, width)
        self.gain = nn.Parameter(torch.zeros(())) if norm else None
        """With ``norm``: F = Q + gain * LayerNorm(attention), gain learnt from 0.1."""
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.MultiheadAttention``'s initialisation: Xavier-uniform over the stacked q/k/v
        projection, zero biases, the output projection as ``nn.Linear`` with a zero bias."""
        bound = math.sqrt(6.0 / (self.q.in_features + 3 * self.dim))
        for lin in (self.q, self.k, self.v):
            nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(lin.bias)
        self.o.reset_parameters()
        nn.init.zeros_(self.o.bias)
        if self.gain is not None:
            nn.init.constant_(self.gain, 0.1)

    def forward(self, query: Tensor, context: Tensor) -> Tensor:
        """(m, W) query tokens, (m', W) context tokens -> (m, W) fused tokens."""
        h, d = self.heads, self.dim // self.heads
        q = self.q(query).view(-1, h, d).transpose(0, 1)
        k = self.k(context).view(-1, h, d).transpose(0, 1)
        v = self.v(context).view(-1, h, d).transpose(0, 1)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1) @ v  # h m d
        out = self.o(att.transpose(0, 1).reshape(-1, self.dim))
        if self.gain is not None:
            out = self.gain * F.layer_norm(out, out.shape[-1:])
        return query + out
