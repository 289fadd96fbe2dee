"""FedTPG (spec-new-methods A1): the generator's invariances and reductions, its own-class
training and its unweighted server, on the tiny model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.worlds import first_batch, tiny_client


def test_class_order_permutes_logits_and_leaves_the_context(world):
    tpg = tiny_client(world, "fedtpg")
    b = first_batch(world)
    with torch.no_grad():
        ctx = tpg.context()
        logits = tpg(b)
        names = list(tpg.classnames)
        perm = list(reversed(range(len(names))))
        tpg.set_classnames([names[i] for i in perm])
        assert torch.allclose(tpg.context(), ctx, atol=1e-5)
        assert torch.allclose(tpg(b), logits[:, perm], atol=1e-4)


def test_zero_generator_output_is_promptfl_with_a_zero_context(world):
    tpg = tiny_client(world, "fedtpg", n_ctx=4)
    fl = tiny_client(world, "promptfl", n_ctx=4)
    with torch.no_grad():
        for layer in (tpg.generator.cross.out_proj, tpg.generator.ff.down):
            layer.weight.zero_()
            layer.bias.zero_()
        fl.ctx.zero_()
        b = first_batch(world)
        assert torch.equal(tpg.context(), torch.zeros_like(fl.ctx))
        assert torch.equal(tpg(b), fl(b))


def test_new_class_names_generate_a_new_context_without_per_class_state(world):
    tpg = tiny_client(world, "fedtpg")
    with torch.no_grad():
        before = tpg.context()
        tpg.set_classnames([f"novel thing {i}" for i in range(3)])
        assert not torch.allclose(tpg.context(), before) and tpg.eval_state().shape[0] == 3


def test_gradient_reaches_every_generator_tensor_and_the_upload_is_the_generator(world):
    tpg = tiny_client(world, "fedtpg")
    tpg.training_step(first_batch(world)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tpg.generator.parameters())
    assert set(tpg.upload()) == set(tpg.generator.state_dict())


def test_server_mean_is_unweighted_by_default(world):
    tpg = tiny_client(world, "fedtpg")
    method, run = tpg.method, tpg.run
    init = tpg.global_init()
    server = method.build_server(init, run)
    a = {k: torch.zeros_like(v) for k, v in init.items()}
    b = {k: torch.ones_like(v) for k, v in init.items()}
    server.aggregate(1, {0: a, 1: b}, {0: 1, 1: 9})
    assert all(torch.allclose(v, torch.full_like(v, 0.5)) for v in server.payload(0, 2).values())
    sized = type(method)(weighting="size").build_server(init, run)
    sized.aggregate(1, {0: a, 1: b}, {0: 1, 1: 9})
    assert all(torch.allclose(v, torch.full_like(v, 0.9)) for v in sized.payload(0, 2).values())


def test_training_never_puts_probability_on_classes_the_client_does_not_hold(world):
    tpg = tiny_client(world, "fedtpg")
    b = first_batch(world)
    own = torch.unique(b["label"])
    tpg.statistics([b])
    assert torch.equal(tpg.own, own) and tpg.extra_state()["own"].tolist() == own.tolist()
    probs = F.softmax(tpg(b), dim=-1)
    others = torch.ones(tpg.num_classes, dtype=torch.bool)
    others[own] = False
    assert others.any() and probs[:, others].max() == 0
    assert torch.isfinite(tpg.training_step(b))


def test_a_newcomer_adapts_on_its_own_classes(world):
    """The unseen-client adaptation of FedTPG is its first-time participant's: the label space is
    the held-out client's own classes (here recorded when its training starts)."""
    from fedmoap.methods.base import HeldOut

    tpg = tiny_client(world, "fedtpg")
    tpg.load_client(1, None)
    seen = []
    held = HeldOut(
        cid=1,
        epochs=1,
        download=lambda upload: tpg.global_init(),
        train=lambda n, stream: seen.append(tpg.own.tolist()),
        train_labels=torch.tensor([2, 0, 2]),
        peer_mean=lambda: None,
    )
    tpg.adapt_unseen(held)
    assert seen == [[0, 2]]


def test_heads_must_divide_the_text_width_and_the_context_is_generated(world):
    from fedmoap.methods import registry

    assert registry()["fedtpg"](heads=3).backbone_problems(world[0])
    assert not registry()["fedtpg"](heads=4).backbone_problems(world[0])
    assert any("ctx_init" in p for p in registry()["fedtpg"](ctx_init="a photo of a").problems())
