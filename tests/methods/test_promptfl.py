"""PromptFL (fedmoap/methods/promptfl.py): one CoOp prompt averaged by FedAvg; a client's logits
are the cosine classifier over its text features, and the server's prompt is the size-weighted
mean of the uploads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.worlds import first_batch, tiny_client, tiny_federation


def test_logits_are_the_scaled_cosine_of_image_and_prompted_text_features(world):
    client = tiny_client(world, "promptfl", n_ctx=4)
    batch = first_batch(world)
    backbone = client.backbone
    text = F.normalize(backbone.encode_prompts(client.slots, client.ctx), dim=-1)
    torch.testing.assert_close(client(batch), backbone.logit_scale * batch["features"] @ text.t())
    client.begin_eval()
    torch.testing.assert_close(client.predict(batch), client(batch))


def test_a_round_sets_the_global_prompt_to_the_size_weighted_mean_of_the_uploads(world, tmp_path):
    from fedmoap.methods.promptfl import PromptFL

    fed = tiny_federation(world, PromptFL(n_ctx=4), tmp_path / "clients", rounds=1)
    start = fed.server.payload(0, 1)
    uploads, sizes = {}, {}
    for cid in range(fed.data.num_clients):
        uploads[cid], _ = fed.train_client(1, cid, start)
        sizes[cid] = fed.data.train_size(cid)
    assert not torch.equal(uploads[0]["prompt"], start["prompt"])  # trained
    fed.server.aggregate(1, uploads, sizes)
    total = sum(sizes.values())
    expected = sum(uploads[c]["prompt"].double() * sizes[c] / total for c in uploads).float()
    torch.testing.assert_close(fed.server.eval_payload(0)["prompt"], expected)
