"""FedVPT and IVLP (fedmoap/methods/fedvpt.py): IVLP at depth one is FedVPT."""

from __future__ import annotations

import torch

from tests.worlds import first_batch, tiny_client


def test_ivlp_at_depth_one_is_fedvpt(world):
    b = first_batch(world, 4)
    plain = tiny_client(world, "fedvpt", batch_size=4, n_ctx=2, vision_tokens=2)
    ivlp = tiny_client(world, "fedvpt", batch_size=4, n_ctx=2, vision_tokens=2, text_depth=1)
    assert torch.equal(plain(b), ivlp(b)) and not hasattr(ivlp, "deep_text")
