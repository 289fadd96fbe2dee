"""The membership-inference attacks (fedmoap/run/mia/attacks.py): the loss threshold is the best
one over every cut, classes without both kinds of shadow sample are left alone, the metrics are
scikit-learn's, and the attack MLPs are seeded."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from fedmoap.run.mia.attacks import Verdict, attack_mlp, fit_threshold, metrics, threshold_attack, train_mlp
from fedmoap.run.mia.records import Records


def records(loss: list[float], member: list[int], label: list[int], num_classes: int = 2) -> Records:
    """Records whose true-label probability is exp(-loss) (the rest spread over the other classes)."""
    n = len(loss)
    p = torch.exp(-torch.tensor(loss, dtype=torch.float64))
    probs = ((1 - p) / (num_classes - 1))[:, None].repeat(1, num_classes)
    probs[torch.arange(n), torch.tensor(label)] = p
    zeros = torch.zeros(n, dtype=torch.long)
    return Records(probs.float(), torch.tensor(member), torch.tensor(label), zeros, zeros)


@pytest.mark.parametrize("seed", range(5))
def test_the_threshold_is_the_best_cut_over_every_observed_loss(seed):
    gen = torch.Generator().manual_seed(seed)
    loss = torch.randint(0, 6, (30,), generator=gen).double()  # many ties
    member = torch.randint(0, 2, (30,), generator=gen)
    threshold, acc = fit_threshold(loss, member)
    cuts = [float(loss.min()) - 1.0, *sorted(set(loss.tolist()))]
    accuracy = {c: float(((loss <= c).long() == member).double().mean()) for c in cuts}
    best = max(accuracy.values())
    assert acc == pytest.approx(best)
    assert threshold == next(c for c in cuts if accuracy[c] == pytest.approx(best))  # the first on ties


def test_threshold_attack_per_class_and_only_where_both_kinds_were_seen():
    shadow = records([0.1, 0.2, 2.0, 3.0, 0.5, 0.6], [1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1])
    target = records([0.15, 2.5, 0.1, 4.0], [1, 0, 1, 0], [0, 0, 1, 1])
    verdict = threshold_attack(shadow, target, num_classes=2)
    assert verdict.pred.tolist() == [1, 0, -1, -1]  # class 1: members only in the shadow, no attack
    assert set(verdict.fitted) == {0} and verdict.fitted[0]["shadow_accuracy"] == 1.0
    tau = verdict.fitted[0]["threshold"]
    assert tau == pytest.approx(0.2, rel=1e-6)
    assert verdict.score[:2].tolist() == pytest.approx([0.5 + math.atan(tau - x) / math.pi for x in (0.15, 2.5)])
    assert math.isnan(verdict.score[2]) and math.isnan(verdict.score[3])


def test_metrics_are_the_class_mean_the_pooled_accuracy_and_sklearns_auc():
    target = records([0.1] * 6, [1, 0, 1, 0, 1, 0], [0, 0, 0, 1, 1, 1])
    verdict = Verdict(
        pred=torch.tensor([1, 0, 0, 1, 1, -1]),
        score=torch.tensor([0.9, 0.2, 0.4, 0.6, 0.8, math.nan], dtype=torch.float64),
        fitted={},
    )
    out = metrics(verdict, target, ["a", "b"])
    assert out["per_class"] == {"a": pytest.approx(2 / 3), "b": pytest.approx(0.5)}
    assert out["accuracy"] == pytest.approx((2 / 3 + 0.5) / 2) and out["pooled_accuracy"] == pytest.approx(3 / 5)
    assert out["attacked"] == 5 and out["unattacked"] == 1
    assert out["auc"] == pytest.approx(roc_auc_score([1, 0, 1, 0, 1], [0.9, 0.2, 0.4, 0.6, 0.8]))
    fpr, tpr, _ = roc_curve([1, 0, 1, 0, 1], [0.9, 0.2, 0.4, 0.6, 0.8])
    assert out["tpr_at_1pct_fpr"] == pytest.approx(tpr[fpr <= 0.01].max()) == pytest.approx(2 / 3)
    lonely = metrics(
        Verdict(torch.tensor([1, 1]), torch.tensor([0.5, 0.5]), {}), records([0.1] * 2, [1, 1], [0, 1]), ["a", "b"]
    )
    assert lonely["auc"] is None and lonely["pooled_accuracy"] is None and lonely["accuracy"] == 1.0


def test_attack_mlps_are_seeded_and_keep_their_best_epoch():
    a, b, c = attack_mlp(3, 0, 1), attack_mlp(3, 0, 1), attack_mlp(3, 0, 2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, c[0].weight)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, generator=gen)
    y = (x[:, 0] > 0.5).long()
    model, epoch, loss = train_mlp(x, y, seed=0, k=0, epochs=15, lr=0.05, batch_size=8)
    again = train_mlp(x, y, seed=0, k=0, epochs=15, lr=0.05, batch_size=8)
    assert 0 <= epoch < 15 and epoch == again[1] and loss == again[2]
    with torch.no_grad():
        summed = torch.nn.functional.cross_entropy(torch.sigmoid(model(x)), y, reduction="sum")
    assert float(summed) <= loss + 1e-3 * len(y)  # the kept weights are at least as good as their epoch's mean
