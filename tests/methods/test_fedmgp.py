"""FedMGP (spec-new-methods A4): one group is FedVPT, what is uploaded, the selection rule, what a
download overwrites, and the two diversity terms, on the tiny model."""

from __future__ import annotations

import torch

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config.sections import DPArgs
from fedmoap.methods.base import HeldOut
from fedmoap.methods.fedmgp import KINDS, FedMGP
from fedmoap.seeding import torch_generator
from tests.worlds import first_batch, tiny_client, tiny_federation


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
    ups = {cid: {"text.0": torch.randn(2, 64), "vision.0": torch.randn(2, 64)} for cid in (0, 1)}
    server = mgp.method.build_server(mgp.global_init(), mgp.run)
    server.aggregate(1, ups, {0: 1, 1: 9})
    vpt_server = vpt.method.build_server(vpt.global_init(), vpt.run)
    vpt_server.aggregate(
        1, {c: {"prompt": u["text.0"], "vision": u["vision.0"][None]} for c, u in ups.items()}, {0: 1, 1: 9}
    )
    assert torch.equal(server.global_state["text_0"], vpt_server.global_state["prompt"])
    assert torch.equal(server.global_state["vision_0"], vpt_server.global_state["vision"][0])


def test_upload_is_s_groups_of_each_kind_and_nothing_else(world):
    mgp = tiny_client(world, "fedmgp")
    with torch.no_grad():
        mgp.text.copy_(torch.arange(5.0).view(5, 1, 1).expand_as(mgp.text))
        mgp.vision.copy_(-torch.arange(5.0).view(5, 1, 1).expand_as(mgp.vision))
    upload = mgp.upload()
    assert list(upload) == [f"{k}.{g}" for k in ("text", "vision") for g in mgp.sent[k].tolist()]  # rank order
    assert sum(v.numel() for v in upload.values()) == 2 * (2 * 64 + 2 * 64)
    for kind, sign in (("text", 1), ("vision", -1)):
        sent = mgp.sent[kind].tolist()
        assert len(set(sent)) == 2
        for g in sent:
            assert torch.all(upload[f"{kind}.{g}"] == sign * g)
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
    upload = mgp.upload()
    sent = {k: v.tolist() for k, v in mgp.sent.items()}
    server = mgp.method.build_server(mgp.global_init(), mgp.run)
    other = {key: torch.full_like(v, 7.0 + r % 2) for r, (key, v) in enumerate(upload.items())}
    server.aggregate(1, {0: upload, 1: other}, {0: 1, 1: 1})
    assert server.payload(1, 2).keys() == upload.keys() and server.payload(0, 2).keys() == upload.keys()
    assert sorted(server.payload(5, 2)) == ["text_0", "text_1", "vision_0", "vision_1"]  # never uploaded
    before = {k: getattr(mgp, k).detach().clone() for k in ("text", "vision")}
    mgp.receive(server.payload(0, 2))
    for kind, old in before.items():
        now = getattr(mgp, kind).detach()
        for g in range(5):
            if g in sent[kind]:
                r = sent[kind].index(g)
                assert torch.equal(now[g], server.global_state[f"{kind}_{r}"])
                torch.testing.assert_close(now[g], (old[g] + 7.0 + r) / 2)
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


def released_rounds(world, tmp_path, clip, z, rounds=2):
    """FedMGP under client_upload on the tiny world, every client in every round: per round and
    client, per uploaded group in rank order (what it uploaded plus the mechanism's noise, what the server received,
    the public value of each uploaded group: the global last written into it, else its initial
    value)."""
    fed = tiny_federation(
        world, FedMGP(), tmp_path, rounds=rounds, dp=DPArgs(mode="client_upload", clip=clip, noise_multiplier=z)
    )
    module, release, receive = fed.module, fed.training.release, fed.module.receive
    initial = module.initial_groups()
    public, out = {}, {}

    def spy_receive(payload):
        prev = None if module.sent is None else {k: v.tolist() for k, v in module.sent.items()}
        receive(payload)
        public[module.client_id] = {
            k: [
                getattr(module, k)[g].detach().clone() if prev is None or g in prev[k] else initial[k][g]
                for g in range(module.method.groups)
            ]
            for k in KINDS
        }

    def spy_release(t, cid, upload, payload):
        got = release(t, cid, upload, payload)
        groups = {k: module.sent[k].tolist() for k in KINDS}
        by_kind = {k: [key for key in upload if key.startswith(k)] for k in KINDS}  # rank order
        gen = torch_generator(0, "dp", t, cid)  # the mechanism's noise, drawn again
        noise = {k: torch.randn(upload[k].shape, generator=gen, dtype=torch.float64) * z * clip for k in sorted(upload)}
        out.setdefault(t, {})[cid] = [
            (upload[key] + noise[key].float(), got[key], public[cid][k][g])
            for k in KINDS
            for key, g in zip(by_kind[k], groups[k])
        ]
        return got

    module.receive, fed.training.release = spy_receive, spy_release
    for t in range(1, rounds + 1):
        fed.run_round(t, progress=False)
    return out


def test_dp_clips_each_uploaded_group_against_its_own_public_value(world, tmp_path):
    """Round 1 (every group at its public initial value) and round 2 (the groups a client uploaded
    hold the globals; a group may be drawn at another rank than before): a clip far above the
    change passes the upload through, a clip near 0 leaves each group's own public value."""
    # z 0.01: at z <= 0.001 the PRV accountant asks for gigabytes
    open_ = released_rounds(world, tmp_path / "open", clip=10.0, z=0.01)
    shut = released_rounds(world, tmp_path / "shut", clip=1e-9, z=0.01)
    for t in (1, 2):
        for cid in (0, 1):
            for noisy_upload, got, _ in open_[t][cid]:
                torch.testing.assert_close(got, noisy_upload, atol=1e-5, rtol=0)
            for noisy_upload, got, public in shut[t][cid]:
                assert not torch.allclose(noisy_upload, public, atol=1e-4)  # training moved it
                torch.testing.assert_close(got, public, atol=1e-7, rtol=0)
