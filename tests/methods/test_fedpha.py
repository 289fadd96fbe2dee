"""FedPHA (spec-new-methods A3): the weak-direction projector, its reductions, the push margin
and heterogeneous local prompt lengths, on the tiny model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedmoap.methods.fedpha import weak_projector
from tests.worlds import first_batch, tiny_client


def test_projector_keeps_the_weak_directions_of_the_global_prompt():
    prompt = torch.randn(8, 32, dtype=torch.float64)
    pi = weak_projector(prompt, 0.8)  # k = floor(8 x 0.2) = 1 strongest direction removed
    assert torch.allclose(pi @ pi, pi, atol=1e-10)
    assert torch.linalg.matrix_rank(pi) == 7
    u, s, vh = torch.linalg.svd(prompt, full_matrices=False)
    top = s[0] * torch.outer(u[:, 0], vh[0])
    assert torch.allclose(prompt @ pi, prompt - top, atol=1e-10)


def test_without_alignment_terms_the_prompts_train_as_promptfl_and_coop(world):
    pha = tiny_client(world, "fedpha", n_ctx=4, lambda_pull=0.0, lambda_push=0.0)
    b = first_batch(world)
    pha.training_step(b).backward()
    g_global, g_local = pha.ctx.grad.clone(), pha.local.grad.clone()
    pha.zero_grad()
    F.cross_entropy(pha.logits(b, pha.text_features()), b["label"]).backward()
    assert torch.allclose(pha.ctx.grad, g_global, rtol=1e-4, atol=1e-5)
    pha.zero_grad()
    F.cross_entropy(pha.logits(b, pha.local_features(projected=False)), b["label"]).backward()
    assert torch.allclose(pha.local.grad, g_local, rtol=1e-4, atol=1e-5)


def test_push_term_vanishes_beyond_the_margin(world):
    pha = tiny_client(world, "fedpha", n_ctx=4, lambda_pull=0.0, alpha=0.0)
    b = first_batch(world)
    full = pha.training_step(b)
    ce = F.cross_entropy(pha.logits(b, pha.local_features(projected=False)), b["label"]) + F.cross_entropy(
        pha.logits(b, pha.text_features()), b["label"]
    )
    assert torch.allclose(full, ce, atol=1e-6)


def test_local_prompts_of_other_lengths_use_their_own_slots(world):
    for cid, n in ((0, 2), (1, 6)):
        pha = tiny_client(world, "fedpha", cid=cid, n_ctx=4, local_lengths=[2, 6])
        assert pha.length() == n
        got = pha.local_features(projected=False)
        slots = pha.backbone.prepare_prompts([pha.method.template.format(c) for c in pha.classnames], n)
        want = F.normalize(pha.backbone.encode_prompts(slots, pha.local[:n]), dim=-1)
        assert torch.isfinite(got).all() and torch.allclose(got, want, atol=1e-6)
        assert set(pha.upload()) == {"prompt"} and pha.upload()["prompt"].shape == (4, pha.backbone.ctx_width)


def test_clients_are_evaluated_with_their_local_prompt_and_newcomers_with_the_global(world):
    pha = tiny_client(world, "fedpha", n_ctx=4)
    assert torch.allclose(pha.eval_state(), pha.local_features(projected=False))
    pha.load_client(1, None)
    pha.prepare_eval(pha.global_init())
    assert torch.allclose(pha.eval_state(), pha.text_features())
