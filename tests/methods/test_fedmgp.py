"""FedMGP (spec-new-methods A4): one group is FedVPT, what is uploaded, the selection rule, what a
download overwrites, and the two diversity terms, on the tiny model."""

from __future__ import annotations

import torch

from tests.worlds import first_batch, tiny_client

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.methods.base import HeldOut
from fedmoap.methods.fedmgp import FedMGP


def test_one_group_without_diversity_is_fedvpt(world):
    b = first_batch(world)
    mgp = tiny_client(world, "fedmgp", groups=1, topk=1, diversity_weight=0.0, weighting="size")
    vpt = tiny_client(world, "fedvpt", n_ctx=2, vision_tokens=2)
    with torch.no_grad():
        vpt.ctx.copy_(mgp.text[0]), vpt.vision[0].copy_(mgp.vision[0])
    torch.testing.assert_close(mgp(b), vpt(b), atol=1e-5, rtol=1e-5)
    mgp.training_step(b).backward(), vpt.training_step(b).backward()
    torch.testing.assert_close(mgp.text.grad[0], vpt.ctx.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(mgp.vision.grad[0], vpt.vision.grad[0], atol=1e-6, rtol=1e-4)
    ups = {cid: {"text_0": torch.randn(2, 64), "vision_0": torch.randn(2, 64)} for cid in (0, 1)}
    server = mgp.method.build_server(mgp.global_init(), mgp.run)
    server.aggregate(1, ups, {0: 1, 1: 9})
    vpt_server = vpt.method.build_server(vpt.global_init(), vpt.run)
    vpt_server.aggregate(
        1, {c: {"prompt": u["text_0"], "vision": u["vision_0"][None]} for c, u in ups.items()}, {0: 1, 1: 9}
    )
    assert torch.equal(server.global_state["text_0"], vpt_server.global_state["prompt"])
    assert torch.equal(server.global_state["vision_0"], vpt_server.global_state["vision"][0])


def test_upload_is_s_groups_of_each_kind_and_nothing_else(world):
    mgp = tiny_client(world, "fedmgp")
    with torch.no_grad():
        mgp.text.copy_(torch.arange(5.0).view(5, 1, 1).expand_as(mgp.text))
        mgp.vision.copy_(-torch.arange(5.0).view(5, 1, 1).expand_as(mgp.vision))
    upload = mgp.upload()
    assert set(upload) == {"text_0", "text_1", "vision_0", "vision_1"}
    assert sum(v.numel() for v in upload.values()) == 2 * (2 * 64 + 2 * 64)
    for kind, sign in (("text", 1), ("vision", -1)):
        sent = mgp.sent[kind].tolist()
        assert len(set(sent)) == 2
        for r, g in enumerate(sent):
            assert torch.all(upload[f"{kind}_{r}"] == sign * g)
    m = FedMGP()
    assert m.topk * (m.n_ctx * 512 + m.vision_tokens * 768) == 5120  # the paper's "5.1k" at ViT-B/16


def test_selection_follows_similarity_and_is_reproducible(world):
    mgp = tiny_client(world, "fedmgp", temperature=0.0)
    with torch.no_grad():
        mgp.text.copy_(torch.randn(mgp.text.shape, generator=torch.Generator().manual_seed(0)))
    glob = {"text_0": mgp.text[3].detach() + 0.01, "text_1": mgp.text[1].detach() * 0.5 + 0.3}
    mgp.receive({**glob, "vision_0": mgp.vision[0].detach(), "vision_1": mgp.vision[2].detach()})
    assert mgp.select("text").tolist() == [3, 1] and sorted(mgp.select("vision").tolist()) == [0, 2]
    uniform = tiny_client(world, "fedmgp")
    counts = torch.zeros(5)
    for t in range(1, 301):
        uniform.planned_round = t
        first = uniform.select("text")
        assert torch.equal(first, uniform.select("text"))  # a function of (seed, kind, round, client)
        counts[first] += 1
    assert counts.sum() == 600 and counts.min() > 90 and counts.max() < 150


def test_download_overwrites_exactly_the_uploaded_groups(world):
    mgp = tiny_client(world, "fedmgp")
    mgp.upload()
    sent = {k: v.tolist() for k, v in mgp.sent.items()}
    before = {k: getattr(mgp, k).detach().clone() for k in ("text", "vision")}
    payload = {f"{k}_{r}": torch.full_like(before[k][0], 7.0 + r) for k in before for r in range(2)}
    mgp.receive(payload)
    for kind, old in before.items():
        now = getattr(mgp, kind).detach()
        for g in range(5):
            if g in sent[kind]:
                assert torch.equal(now[g], payload[f"{kind}_{sent[kind].index(g)}"])
            else:
                assert torch.equal(now[g], old[g])


def test_unseen_client_fills_its_groups_with_the_globals_in_turn(world):
    mgp = tiny_client(world, "fedmgp")
    payload = {f"{k}_{r}": torch.full((2, 64), 1.0 + r) for k in ("text", "vision") for r in range(2)}
    mgp.load_client(1, None)
    mgp.prepare_unseen(HeldOut(1, 0, lambda up: payload, None, torch.zeros(1), lambda: None))
    assert [float(mgp.text[g, 0, 0].detach()) for g in range(5)] == [1, 2, 1, 2, 1]


def mean_distance(client, b):
    with torch.no_grad():
        text, image = client.text_features(), client.image_features(b["pixels"])
        i, j = torch.triu_indices(5, 5, 1)
        return float((text[i] - text[j]).abs().mean() + (image[i] - image[j]).abs().mean())


def test_push_spreads_the_groups_and_the_code_term_pulls_them_together(world):
    b = first_batch(world)
    moved = {}
    for diversity in ("push", "code"):
        mgp = tiny_client(world, "fedmgp", diversity=diversity)
        before = mean_distance(mgp, b)
        loss = mgp.diversity_loss(mgp.text_features(), mgp.image_features(b["pixels"]))
        assert loss > 0
        loss.backward()
        with torch.no_grad():
            for p in (mgp.text, mgp.vision):
                p -= 0.01 * p.grad / p.grad.norm()
        moved[diversity] = mean_distance(mgp, b) - before
    assert moved["push"] > 0 > moved["code"]


def test_refuses_a_cnn_image_tower():
    (problem,) = FedMGP().backbone_problems(OpenCLIPBackbone.build("fedmoap-tiny-rn", None, seed=0))
    assert "method fedmgp needs a ViT image tower" in problem
