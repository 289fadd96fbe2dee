"""The two attacks, fitted per class on shadow records and applied to the target's, and their
metrics (torchmetrics).

- DP-FPL's attack model (mia_train.py): per class, Linear(C, 32) -> ReLU -> Linear(32, 2) ->
  sigmoid, cross-entropy on the two sigmoid outputs, Adam, keeping the epoch with the lowest summed
  training loss. The reference meant to keep that epoch but kept the last (``best_model =
  attack_model.cpu()`` aliases the live module); here the best epoch's weights are a deep copy.
- A class-conditional loss threshold: per class, the threshold on the cross-entropy of the true
  label that best separates the shadow members (low loss) from the non-members.

Each attack gives per target sample a hard in/out prediction and a score (higher = member) for
the AUC and the TPR at 1 % FPR. A class without both shadow members and non-members has no attack;
its target samples are left out of every metric (counted in ``unattacked``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_accuracy, binary_auroc, binary_roc

from fedmoap.run.mia.records import Records
from fedmoap.seeding import derive_seed, torch_generator

__all__ = ["HIDDEN", "Verdict", "attack_mlp", "train_mlp", "mlp_attack", "fit_threshold", "threshold_attack", "metrics"]

HIDDEN = 32
"""Hidden width of DP-FPL's attack MLP."""


@dataclass
class Verdict:
    """An attack's output on the target records: hard predictions, scores (both NaN/-1 where
    the class had no attack), and per class a note of how it was fitted."""

    pred: Tensor
    score: Tensor
    fitted: dict[int, dict]


def attack_mlp(num_classes: int, seed: int, k: int) -> nn.Module:
    """DP-FPL's attack model for class ``k``, initialised from (seed, "mia/mlp", k)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "mia/mlp", k))
        return nn.Sequential(nn.Linear(num_classes, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2))


def train_mlp(
    x: Tensor, y: Tensor, seed: int, k: int, epochs: int, lr: float, batch_size: int
) -> tuple[nn.Module, int, float]:
    """(the model at its best epoch, that epoch (0-based), its summed training loss): Adam on
    cross-entropy of the sigmoid outputs, batches shuffled by (seed, "mia/mlp-order", k)."""
    model = attack_mlp(x.shape[1], seed, k)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order_gen = torch_generator(seed, "mia/mlp-order", k)
    best_state, best_epoch, best_loss = copy.deepcopy(model.state_dict()), -1, math.inf
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=order_gen)
        total = 0.0
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(torch.sigmoid(model(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)  # summed over samples, as batch 1 sums it
        if total < best_loss:
            best_state, best_epoch, best_loss = copy.deepcopy(model.state_dict()), epoch, total
    model.load_state_dict(best_state)
    model.eval()
    return model, best_epoch, best_loss


def mlp_attack(
    shadow: Records, target: Records, num_classes: int, seed: int, epochs: int, lr: float, batch_size: int
) -> Verdict:
    """One attack MLP per class trained on ``shadow``, applied to ``target``."""
    pred = torch.full((len(target),), -1, dtype=torch.long)
    score = torch.full((len(target),), math.nan, dtype=torch.float64)
    fitted = {}
    for k in range(num_classes):
        s, t = shadow.label == k, target.label == k
        if not _both(shadow.member[s]) or not t.any():
            continue
        model, epoch, loss = train_mlp(shadow.probs[s], shadow.member[s], seed, k, epochs, lr, batch_size)
        with torch.no_grad():
            out = torch.sigmoid(model(target.probs[t]))
        pred[t] = out.argmax(-1)
        score[t] = out.double().softmax(-1)[:, 1]
        fitted[k] = {"shadow_samples": int(s.sum()), "best_epoch": epoch, "best_loss": loss}
    return Verdict(pred, score, fitted)


def fit_threshold(loss: Tensor, member: Tensor) -> tuple[float, float]:
    """(threshold, shadow accuracy): "member" when loss <= threshold, the threshold among the
    observed losses (or below all of them) that maximises accuracy; the first such on ties."""
    order = torch.argsort(loss, stable=True)
    sorted_loss, m = loss[order], member[order].double()
    correct = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(m, 0)]) + torch.cat(
        [(1 - m).sum()[None], (1 - m).sum() - torch.cumsum(1 - m, 0)]
    )
    last_of_run = torch.cat([sorted_loss[1:] != sorted_loss[:-1], torch.ones(1, dtype=torch.bool)])
    valid = torch.cat([torch.ones(1, dtype=torch.bool), last_of_run])  # cut after a run of equal losses
    correct = torch.where(valid, correct, torch.full_like(correct, -1.0))
    i = int(torch.argmax(correct))
    threshold = float(sorted_loss[0]) - 1.0 if i == 0 else float(sorted_loss[i - 1])
    return threshold, float(correct[i]) / len(loss)


def threshold_attack(shadow: Records, target: Records, num_classes: int) -> Verdict:
    """Per class, the loss threshold fitted on ``shadow``, applied to ``target``."""
    pred = torch.full((len(target),), -1, dtype=torch.long)
    score = torch.full((len(target),), math.nan, dtype=torch.float64)
    fitted = {}
    shadow_loss, target_loss = shadow.losses(), target.losses()
    for k in range(num_classes):
        s, t = shadow.label == k, target.label == k
        if not _both(shadow.member[s]) or not t.any():
            continue
        tau, acc = fit_threshold(shadow_loss[s], shadow.member[s])
        pred[t] = (target_loss[t] <= tau).long()
        score[t] = 0.5 + torch.atan(tau - target_loss[t]) / math.pi  # in (0, 1), slow to saturate
        fitted[k] = {"shadow_samples": int(s.sum()), "threshold": tau, "shadow_accuracy": acc}
    return Verdict(pred, score, fitted)


def metrics(verdict: Verdict, target: Records, classnames: list[str]) -> dict:
    """Attack accuracy per class and its unweighted mean (DP-FPL's "average MIA success"), the
    accuracy over all attacked samples, the AUC and the TPR at 1 % FPR (torchmetrics)."""
    ok = verdict.pred >= 0
    per_class: dict[str, float | None] = {}
    for k, name in enumerate(classnames):
        sel = ok & (target.label == k)
        per_class[name] = float(binary_accuracy(verdict.pred[sel].float(), target.member[sel])) if sel.any() else None
    values = [v for v in per_class.values() if v is not None]
    out = {
        "accuracy": sum(values) / len(values) if values else None,
        "per_class": per_class,
        "pooled_accuracy": None,
        "auc": None,
        "tpr_at_1pct_fpr": None,
        "attacked": int(ok.sum()),
        "unattacked": int((~ok).sum()),
    }
    if _both(target.member[ok]):
        score, member = verdict.score[ok], target.member[ok]
        fpr, tpr, _ = binary_roc(score, member)
        out.update(
            pooled_accuracy=float(binary_accuracy(verdict.pred[ok].float(), member)),
            auc=float(binary_auroc(score, member)),
            tpr_at_1pct_fpr=float(tpr[fpr <= 0.01].max()),
        )
    return out


def _both(member: Tensor) -> bool:
    return bool(member.numel()) and bool((member == 1).any()) and bool((member == 0).any())
