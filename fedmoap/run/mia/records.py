"""What the attacks see: per-sample softmax outputs of a client's evaluation model with a
membership bit, and the shadow splits the shadow federations train on.

A record set holds, per sample, the softmax vector of the client's evaluation model (set up as
:meth:`fedmoap.federation.rounds.Federation.evaluate` sets it up: its stored state, the server's evaluation
payload, evaluation-time adaptation), whether the sample is a member (one of the client's
training samples, seen as evaluation sees images: unaugmented) or not (one of its test samples),
its label, its row in its split and the client. Members and non-members are balanced per client
and class by seeded subsampling, so an attack that always answers the same scores 50 %. The
softmax is over all the run's classes (also under ``eval.local_label_space: own``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedmoap.data.split import ClientSplit
from fedmoap.errors import FedmoapError
from fedmoap.federation.rounds import Federation
from fedmoap.seeding import numpy_rng

__all__ = [
    "Records",
    "prepare_client",
    "softmax_outputs",
    "balance",
    "client_records",
    "group_labels",
    "shadow_pools",
    "shadow_split",
]


@dataclass
class Records:
    """Per-sample attack inputs (N samples, C classes)."""

    probs: Tensor
    """(N, C) float32 softmax outputs."""
    member: Tensor
    """(N,) int64: 1 for a training sample of the client, 0 for a test sample."""
    label: Tensor
    """(N,) int64 true labels."""
    row: Tensor
    """(N,) int64 row in the train split (members) or the test split (non-members)."""
    client: Tensor
    """(N,) int64 client id."""

    def __len__(self) -> int:
        return len(self.label)

    @staticmethod
    def cat(parts: list["Records"]) -> "Records":
        return Records(
            *(torch.cat([getattr(p, k) for p in parts]) for k in ("probs", "member", "label", "row", "client"))
        )

    def losses(self) -> Tensor:
        """(N,) float64 cross-entropy of the true label, from the softmax outputs."""
        p = self.probs.double().gather(1, self.label[:, None])[:, 0]
        return -torch.log(p.clamp_min(1e-300))


def prepare_client(federation: Federation, cid: int, t: int) -> None:
    """Load client ``cid``'s evaluation model after round ``t`` into the federation's module."""
    module = federation.module
    module.load_client(cid, federation.store.get(cid) if module.personal_eval else None)
    module.prepare_eval(federation.server.eval_payload(cid))
    federation.adapt(cid, t)
    with federation.fabric.autocast():
        module.begin_eval()


@torch.no_grad()
def softmax_outputs(federation: Federation, batches) -> tuple[Tensor, Tensor]:
    """(softmax outputs (N, C) float32 on the CPU, labels (N,)) of the loaded client on ``batches``."""
    module = federation.module
    module.eval()
    probs, labels = [], []
    with federation.fabric.autocast():
        for batch in batches:
            labels.append(batch.pop("label").cpu())
            probs.append(module.predict(batch).float().softmax(-1).cpu())
    return torch.cat(probs), torch.cat(labels)


def balance(labels_in: Tensor, labels_out: Tensor, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the members and non-members kept: per class, a seeded random subset of the
    larger side cut to the smaller side's count."""
    keep_in, keep_out = [], []
    a, b = labels_in.numpy(), labels_out.numpy()
    for k in np.union1d(a, b):
        pos_in, pos_out = np.flatnonzero(a == k), np.flatnonzero(b == k)
        n = min(len(pos_in), len(pos_out))
        keep_in.append(np.sort(rng.choice(pos_in, n, replace=False)))
        keep_out.append(np.sort(rng.choice(pos_out, n, replace=False)))
    return np.concatenate(keep_in).astype(np.int64), np.concatenate(keep_out).astype(np.int64)


def client_records(federation: Federation, split: ClientSplit, cid: int, t: int, seed: int, tag: str) -> Records:
    """Client ``cid``'s balanced records after round ``t``: members from its training rows in
    ``split``, non-members from its test rows; the subsample drawn from (seed, ``tag``, cid)."""
    prepare_client(federation, cid, t)
    bs = federation.schedule.eval_batch_size
    p_in, y_in = softmax_outputs(federation, federation.data.plain_train_batches(cid, bs))
    p_out, y_out = softmax_outputs(federation, federation.data.test_batches(cid, bs))
    rows_in, rows_out = np.asarray(split.train[cid]), np.asarray(split.test[cid])
    if (len(rows_in), len(rows_out)) != (len(y_in), len(y_out)):
        raise FedmoapError(
            f"client {cid}: the restored data do not match its split ({len(y_in)} training "
            f"and {len(y_out)} test samples; the split lists {len(rows_in)} and {len(rows_out)})"
        )
    k_in, k_out = balance(y_in, y_out, numpy_rng(seed, "mia/balance", tag, cid))
    n_in, n_out = len(k_in), len(k_out)
    return Records(
        probs=torch.cat([p_in[k_in], p_out[k_out]]),
        member=torch.cat([torch.ones(n_in, dtype=torch.long), torch.zeros(n_out, dtype=torch.long)]),
        label=torch.cat([y_in[k_in], y_out[k_out]]).long(),
        row=torch.from_numpy(np.concatenate([rows_in[k_in], rows_out[k_out]])),
        client=torch.full((n_in + n_out,), cid, dtype=torch.long),
    )


# ----- shadow splits --------------------------------------------------------------------------
def group_labels(labels: np.ndarray, domains: np.ndarray | None, num_classes: int) -> np.ndarray:
    """A sample's group, what shadow splits mirror: its class, within its domain where the dataset
    has domains (``label + num_classes * domain``)."""
    return labels if domains is None else labels + num_classes * domains


def _group_name(g: int, classnames: list[str], domain_names: list[str] | None) -> str:
    name = repr(classnames[g % len(classnames)])
    return name if domain_names is None else f"{name} in domain {domain_names[g // len(classnames)]!r}"


def shadow_pools(split: ClientSplit, groups: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(train rows no client trains on, test rows in no client's test set): the images shadow
    federations may use."""
    used_train = np.unique(np.concatenate(split.train))
    used_test = np.unique(np.concatenate(split.test))
    return (np.setdiff1d(np.arange(len(groups[0])), used_train), np.setdiff1d(np.arange(len(groups[1])), used_test))


def shadow_split(
    split: ClientSplit,
    train_groups: np.ndarray,
    test_groups: np.ndarray,
    seed: int,
    index: int,
    classnames: list[str],
    domain_names: list[str] | None = None,
) -> ClientSplit:
    """Shadow federation ``index``'s split: every client gets as many training and test images of
    each class (and domain) as the target's client of the same id, drawn without replacement
    from :func:`shadow_pools` with the generator (seed, "mia/shadow-split", index). A pool too
    small is refused with one line naming the class and the settings that would free images."""
    pools = shadow_pools(split, (train_groups, test_groups))
    rng = numpy_rng(seed, "mia/shadow-split", index)
    parts: dict[str, list[list[np.ndarray]]] = {}
    for side, per_client, groups, pool in (
        ("train", split.train, train_groups, pools[0]),
        ("test", split.test, test_groups, pools[1]),
    ):
        out: list[list[np.ndarray]] = [[] for _ in per_client]
        for g in np.unique(np.concatenate([groups[np.asarray(r)] for r in per_client])):
            need = [int(np.sum(groups[np.asarray(r)] == g)) for r in per_client]
            have = pool[groups[pool] == g]
            if sum(need) > len(have):
                what = (
                    f"training images of class {_group_name(g, classnames, domain_names)} that no client trained on"
                    if side == "train"
                    else f"test images of class {_group_name(g, classnames, domain_names)} outside the "
                    "clients' test sets"
                )
                fix = (
                    "fewer data.shots or data.num_clients leave more"
                    if side == "train"
                    else "a smaller data.max_test_per_client leaves more"
                )
                raise FedmoapError(
                    f"mia: a shadow federation needs {sum(need)} {what}, the dataset has {len(have)} ({fix})"
                )
            drawn = rng.permutation(have)
            start = 0
            for c, n in enumerate(need):
                out[c].append(drawn[start : start + n])
                start += n
        parts[side] = [np.sort(np.concatenate(o)).astype(np.int64) for o in out]
    return ClientSplit(parts["train"], parts["test"], split.train_id, split.test_id)
