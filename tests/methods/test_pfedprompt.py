"""pFedPrompt (fedmoap/methods/pfedprompt.py): the client's cache of its training features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.worlds import method_federation as federation
from tests.worlds import pathological_world

NUM_CLIENTS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, synthetic data over 4 clients split pathologically, features, tokens and pixels."""
    return pathological_world(tmp_path_factory.mktemp("cache"), NUM_CLIENTS)


def test_pfedprompt_cache_holds_the_clients_training_features(world, tmp_path):
    fed = federation(world, "pfedprompt", tmp_path)
    upload, state = fed.train_client(1, 2, fed.server.payload(2, 1))
    assert set(upload) == {"prompt"}
    keys, values = state["extra"]["cache_keys"], state["extra"]["cache_values"]
    data = fed.data
    feats = data.train.features[0, data.train_pos[2]]
    labels = data.train_labels(2)
    assert len(keys) == len(feats)
    order = [int(torch.nonzero((keys == f).all(1))[0]) for f in feats]
    torch.testing.assert_close(values[order], F.one_hot(labels, len(world[1])).float())
    m = fed.module
    m.begin_eval()
    batch = next(data.test_batches(2, 64))
    batch.pop("label")
    cache = torch.exp(-5.5 * (1 - batch["features"] @ keys.t())) @ values
    torch.testing.assert_close(m.predict(batch), m.logits(batch, m.text_features()) + cache)
