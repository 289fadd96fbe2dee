"""Per-patch token features (FedOTP's input) get ``data.num_views`` augmented views like pooled
features: FedOTP trains on augmented tokens, of the same augmented image and the same view drawn
per image and epoch as the pooled features every other cached-feature method trains on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config.sections import DataArgs
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split
from fedmoap.inputs.features import FeatureCache
from fedmoap.inputs.federated_data import gather_inputs
from fedmoap.methods import registry
from fedmoap.seeding import derive_seed

NUM_VIEWS = 2
EPOCHS = 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT on the synthetic data over 3 clients: FedOTP's inputs and PromptFL's (pooled
    features), gathered from one split and one cache directory."""
    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    args = DataArgs(source="synthetic", num_clients=3, shots=4, max_test_per_client=12, num_views=NUM_VIEWS)
    source = load_source(args)
    split = make_split(args, source, seed=0)
    root = tmp_path_factory.mktemp("cache")
    methods = registry()
    assert methods["fedotp"].inputs == {"tokens"} and methods["promptfl"].inputs == {"features"}
    tokens = gather_inputs(
        methods["fedotp"].inputs, args, source, split, None, FeatureCache(root, backbone, tokens=True), None, seed=0
    )
    pooled = gather_inputs(
        methods["promptfl"].inputs, args, source, split, FeatureCache(root, backbone), None, None, seed=0
    )
    used = np.unique(np.concatenate(split.train))
    return backbone, args, source, used, tokens, pooled


def encode_view(backbone, args: DataArgs, image, row: int, view: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token features (T, D), pooled feature (D,)) of augmented view ``view`` of dataset row
    ``row``, straight through the backbone (the crop and flip are seeded by view seed, row and
    view, as the feature cache documents)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(args.view_seed, "view", row, view))
        x = backbone.image_transform(train=True)(image)[None]
    with torch.no_grad():
        return (
            F.normalize(backbone.encode_image_tokens(x).float(), dim=-1)[0],
            F.normalize(backbone.encode_image(x).float(), dim=-1)[0],
        )


def locate(cached: torch.Tensor, feature: torch.Tensor) -> tuple[int, int]:
    """(view, position) of the one cached pooled feature equal to ``feature``."""
    hits = (cached == feature).all(-1).nonzero()
    assert len(hits) == 1, f"{len(hits)} cached features match"
    return int(hits[0, 0]), int(hits[0, 1])


def test_fedotp_trains_on_augmented_tokens_of_the_view_the_pooled_path_draws(world):
    backbone, args, source, used, tok, pool = world
    assert tok.train.tokens.shape[:2] == (NUM_VIEWS + 1, len(used))
    assert tok.train.views == pool.train.views == NUM_VIEWS + 1
    drawn, direct = set(), 0
    for cid in range(tok.num_clients):
        tok_epochs, pool_epochs = tok.train_batches(cid, 1, 8), pool.train_batches(cid, 1, 8)
        for e in range(EPOCHS):
            for tb, pb in zip(tok_epochs(e), pool_epochs(e), strict=True):
                assert torch.equal(tb["label"], pb["label"])
                for i in range(len(tb["label"])):
                    view, pos = locate(pool.train.features, pb["features"][i])
                    drawn.add(view)
                    # FedOTP's tokens are those of the view the pooled path drew for this image
                    assert torch.equal(tb["tokens"][i], tok.train.tokens[view, pos])
                    if view == 0:
                        continue
                    assert not torch.allclose(tb["tokens"][i], tok.train.tokens[0, pos])
                    if direct < 6:  # a few through the backbone: the same augmented image
                        row = int(used[pos])
                        want_tokens, want_pooled = encode_view(
                            backbone, args, source.train[row][args.image_column], row, view
                        )
                        torch.testing.assert_close(tb["tokens"][i], want_tokens, atol=1e-5, rtol=1e-4)
                        torch.testing.assert_close(pb["features"][i], want_pooled, atol=1e-5, rtol=1e-4)
                        direct += 1
    assert drawn == set(range(NUM_VIEWS + 1)) and direct == 6


def test_token_evaluation_and_statistics_read_the_plain_view(world):
    _, _, _, _, tok, _ = world
    assert tok.test.tokens.shape[0] == 1
    test = torch.cat([b["tokens"] for b in tok.test_batches(0, 8)])
    torch.testing.assert_close(test, tok.test.tokens[0, tok.test_pos[0]], rtol=0, atol=0)
    plain = torch.cat([b["tokens"] for b in tok.plain_train_batches(0, 8)])
    torch.testing.assert_close(plain, tok.train.tokens[0, tok.train_pos[0]], rtol=0, atol=0)
