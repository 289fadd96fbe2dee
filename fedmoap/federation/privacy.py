"""Differential privacy for every method: the two mechanisms and the accountant (``dp:``).

``dp.mode``:

Adjacency (``dp.adjacency``, reported in ``results.json`` as ``privacy.neighbours``):
``add_remove`` (default), neighbouring datasets differ by the presence of one client's data (or one
record), which the zero-out mechanisms below bound by the clip norm; ``replace``, they differ by
one exchanged for another, which moves a clipped sum by up to twice the clip norm, so ε is
accounted at half the noise multiplier (and a target ε solves twice the noise).

- ``client_upload`` (client-level adjacency: neighbouring federations differ in one client's whole
  data). The round loop applies it to whatever a method uploads: the change of the upload,
  Δ = upload − reference, over all uploaded tensors together, is clipped to L2 norm S
  (``dp.clip``) and N(0, z²S²) is added to every coordinate; the server receives
  ``reference + clip(Δ) + noise`` and nothing else. The *reference* is what the server already
  knows: the payload's tensor of the same key when the server sent one (e.g. the global prompt
  the client started from), else the method's public initial value of that key
  (:meth:`~fedmoap.methods.base.ClientModule.global_init`, a function of the run seed), else zero.
  Never the client's own stored state, which is private. Noise is seeded by
  (seed, "dp", round, client), so runs stay deterministic. Aggregation, pFedMoAP's pool, KNN and
  experts only read the noisy uploads: post-processing. Accounting: the Gaussian mechanism
  composed over the client's actual uploads, q = 1 (the server knows who participates: no
  amplification by sampling); the worst client is reported.
- ``record_sgd`` (record-level adjacency: one training example changed). DP-SGD on every
  parameter the client trains (the gating network too, though never uploaded: otherwise the
  non-private gating would steer the released prompt), with Poisson sampling: each step takes
  each of the client's n examples independently with rate q = 1 / ceil(n / B) (B =
  ``train.batch_size``; ceil(n / B) steps per epoch, so an epoch sees every example once in
  expectation, as Opacus's ``DPDataLoader``), computes each example's gradient with
  ``torch.func`` (``functional_call`` + ``vmap(grad)`` of the method's ``training_step`` on a
  batch of one, regularisers included), clips the concatenation over all trained parameters to C
  (``dp.clip``), sums, adds N(0, z²C²) and divides by the expected batch size q·n; then the
  method's optimizer steps as usual. Accounting: the sampled Gaussian mechanism with (z, q,
  steps) over every step the client takes; the worst client is reported. (Opacus's
  ``GradSampleModule`` cannot be used: prompts enter the frozen text tower as a bare parameter
  concatenated into its input, which it cannot hook; Opacus is used for accounting only.)

What is public, under either mode: each client's training-set size n, un-noised. It reaches the
server as the client's FedAvg weight (the round loop hands ``train_size`` to
:meth:`~fedmoap.methods.base.Server.aggregate`), in Flower's train reply (``num-examples``), and
DP-SGD uses it in its sampling rate q = 1 / ceil(n / B) and in dividing the noisy sum by q·n;
neither mechanism nor the accountant covers it. Public too: who takes part in which round, the
run seed and what derives from it (initial values, seeded draws), ``dp.clip`` and the noise
multiplier, and an upload's keys (FedMGP's name the groups a client shares, which is why FedMGP
with s < G is refused under ``client_upload``).

What a method cannot combine with is derived from its declarations
(:mod:`fedmoap.federation.combinations`): e.g. client statistics (PEP-FedPT's class prototypes)
under either mode, a loss that reads other records (FedTPG's own label space) under
``record_sgd``.

The mechanisms are wrappers around the plain local training, as Flower's ``DifferentialPrivacy*``
wrappers are around a strategy: :class:`NoisyUploads` (``client_upload``) trains plainly and
clips and noises what leaves; :class:`RecordDPSGD` (``record_sgd``) replaces the training by
DP-SGD and releases the upload as it is. Both report to one :class:`Accountant`;
:func:`private_training` composes them from the ``dp`` section.

ε is computed by Opacus's RDP and PRV accountants for the steps actually taken; ``dp.epsilon``
solves z (``opacus.accountants.utils.get_noise_multiplier``) for the steps the planned
``fed.rounds`` take, for the worst client; the plan asks the federation who trains in each round
(:meth:`~fedmoap.federation.rounds.Federation.trainers`), so held-out clients, which never train, plan no
step. The solved z is kept in the checkpoint, so extending a finished run keeps it (and its ε then
grows past the target).
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from fedmoap.federation.dp_budget import ADJACENCY, effective, epsilon, solve_noise_multiplier
from fedmoap.federation.dp_sgd import dp_sgd, steps_per_epoch
from fedmoap.federation.local import LocalTraining
from fedmoap.seeding import torch_generator

if TYPE_CHECKING:
    from fedmoap.config.sections import DPArgs
    from fedmoap.federation.schedule import Schedule
    from fedmoap.methods.base import ClientModule, Method, Payload


__all__ = ["clip_and_noise", "Accountant", "PrivateTraining", "NoisyUploads", "RecordDPSGD", "private_training"]


# ------------------------------------------------------------------------------ mechanisms
def clip_and_noise(
    delta: dict[str, Tensor], clip: float, noise_multiplier: float, gen: torch.Generator
) -> tuple[dict[str, Tensor], float]:
    """``delta`` (tensors of any shapes) clipped to L2 norm ``clip`` over all of them together,
    plus N(0, (z·clip)²) per coordinate from ``gen``; computed in float64, returned in each
    tensor's dtype. Also returns the norm before clipping."""
    keys = sorted(delta)
    norm = math.sqrt(sum(float(delta[k].double().square().sum()) for k in keys))
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    out = {}
    for k in keys:
        d = delta[k]
        noise = torch.randn(d.shape, generator=gen, dtype=torch.float64) * (noise_multiplier * clip)
        out[k] = (d.detach().cpu().double() * factor + noise).to(d.dtype)
    return out, norm


# ------------------------------------------------------------------------------ the accountant
class Accountant:
    """The noise multiplier z of a run (given, solved from a target ε over the planned rounds, or
    kept from a checkpoint) and ε of the steps each client has taken: Opacus's RDP and PRV
    accountants, the worst client reported in :attr:`summary` (``results.json``'s ``privacy``).
    Its state is a function of the rounds' participants, so :meth:`replay` rebuilds it on resume.
    """

    def __init__(
        self,
        args: DPArgs,
        *,
        sample_rate: Callable[[int], float],
        steps_of: Callable[[int, int], int],
        planned: dict[int, int],
        rounds: int,
        active: bool,
        state: dict | None = None,
    ) -> None:
        self.args = effective(args)
        self.mode, self.adjacency, self.relation = args.mode, ADJACENCY[args.mode], args.adjacency
        self.sensitivity = 2.0 if args.adjacency == "replace" else 1.0
        """Sensitivity in units of the clip norm: replacing one client (record) moves the clipped
        sum by up to twice the clip norm, adding or removing one by up to the clip norm."""
        self.clip, self.delta = float(args.clip), self.args.delta
        self.sample_rate, self.steps_of = sample_rate, steps_of
        self.planned, self.active = planned, active
        """Each client's steps over the planned rounds; whether the mechanism touches anything."""
        self.steps: dict[int, int] = {}
        self.notes: list[str] = []
        if state is not None and state.get("noise_multiplier") is not None:
            self.noise_multiplier = float(state["noise_multiplier"])
        elif self.args.noise_multiplier is not None:
            self.noise_multiplier = float(self.args.noise_multiplier)
        else:
            plans = [(sample_rate(c), s) for c, s in planned.items() if s > 0]
            self.noise_multiplier = self.sensitivity * (
                solve_noise_multiplier(self.args.epsilon, self.delta, plans, self.args.accountant) if plans else 0.0
            )
        if self.args.epsilon is not None and self.noise_multiplier > 0:
            worst = max(
                (
                    epsilon(self.accounted_z, sample_rate(c), s, self.delta, self.args.accountant) or math.inf
                    for c, s in planned.items()
                    if s > 0
                ),
                default=0.0,
            )
            if worst > self.args.epsilon + 0.02:
                self.notes.append(
                    f"z = {self.noise_multiplier:.4g} was solved for fewer rounds than "
                    f"fed.rounds {rounds} (an extended run): epsilon will reach "
                    f"{worst:.3g}, above dp.epsilon {self.args.epsilon:g}"
                )
        if not active:
            self.notes.append(
                "the method uploads nothing: the server receives nothing to protect "
                "(epsilon 0 for the uploads; the clients' models are not protected)"
                if self.mode == "client_upload"
                else "the method trains nothing: no private data is used (epsilon 0)"
            )
        self.summary: dict[str, Any] = {}
        self._update_summary()

    @property
    def accounted_z(self) -> float:
        """The noise multiplier the accountant sees: noise std over the sensitivity."""
        return self.noise_multiplier / self.sensitivity

    def state_dict(self) -> dict:
        return {"noise_multiplier": self.noise_multiplier}

    def replay(self, history: list[dict]) -> None:
        """The accountant after the recorded rounds (resume)."""
        for record in history:
            for c in record["participants"]:
                self.steps[c] = self.steps.get(c, 0) + self.steps_of(c, record["round"])
        self._update_summary()

    def account(self, t: int, participants: list[int], norms: dict[int, list[float]]) -> dict[str, Any]:
        """Round ``t``: its participants' steps; the round's ``results.json`` entries (ε so far,
        the worst client's; clipping diagnostics of ``norms``, the norms before clipping, which
        are not private)."""
        for c in participants:
            self.steps[c] = self.steps.get(c, 0) + self.steps_of(c, t)
        self._update_summary()
        flat = [x for c in sorted(norms) for x in norms[c]]
        return {
            "eps_rdp": self.summary["eps_rdp"],
            "eps_prv": self.summary["eps_prv"],
            "dp_clipped_fraction": (sum(x > self.clip for x in flat) / len(flat)) if flat else None,
            "dp_median_norm": statistics.median(flat) if flat else None,
        }

    def epsilons(self, cid: int) -> tuple[float | None, float | None]:
        s = self.steps.get(cid, 0)
        if s == 0 or self.noise_multiplier <= 0:
            return 0.0, 0.0
        args = (self.accounted_z, self.sample_rate(cid), s, self.delta)
        return epsilon(*args, "rdp"), epsilon(*args, "prv")

    def _update_summary(self) -> None:
        # for one sample rate, epsilon grows with the steps: only each rate's busiest client counts
        busiest: dict[float, int] = {}
        for c in sorted(self.steps):
            q = self.sample_rate(c)
            if self.steps[c] > self.steps.get(busiest.get(q, -1), -1):
                busiest[q] = c
        worst, eps_rdp, eps_prv = None, 0.0, 0.0  # None: the accountant gave no finite epsilon
        for c in busiest.values():
            rdp, prv = self.epsilons(c)
            if worst is None or _larger(rdp, eps_rdp):
                worst, eps_rdp = c, rdp
            eps_prv = prv if _larger(prv, eps_prv) else eps_prv
        self.summary.update(
            {
                "mode": self.mode,
                "adjacency": self.adjacency,
                "neighbours": self.relation,
                "sensitivity": self.sensitivity * self.clip,
                "clip": self.clip,
                "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate(worst) if worst is not None else None,
                "steps": self.steps.get(worst, 0) if worst is not None else 0,
                "delta": self.delta,
                "eps_rdp": eps_rdp,
                "eps_prv": eps_prv,
                "worst_client": worst,
                "target_epsilon": self.args.epsilon,
                "accountant": self.args.accountant,
                "preset": self.args.preset,
                "notes": list(self.notes),
            }
        )


# ------------------------------------------------------------------------------ the wrappers
class PrivateTraining(LocalTraining):
    """A DP mechanism around a run's plain local training: the round loop calls :meth:`train`,
    :meth:`release` and :meth:`after_round` as on a plain :class:`~fedmoap.federation.local.LocalTraining`,
    so it never asks which mechanism runs. Holds the run's :class:`Accountant` and each client's
    norms before clipping (a node hands them to the server, which accounts the round)."""

    def __init__(self, inner: LocalTraining, accountant: Accountant, seed: int) -> None:
        self.inner, self.accountant, self.seed = inner, accountant, seed
        self.data, self.fabric, self.batch_size = inner.data, inner.fabric, inner.batch_size
        self._norms: dict[int, list[float]] = {}

    @property
    def noise_multiplier(self) -> float:
        return self.accountant.noise_multiplier

    @noise_multiplier.setter
    def noise_multiplier(self, value: float) -> None:  # a Flower node takes the server's z
        self.accountant.noise_multiplier = value

    @property
    def summary(self) -> dict[str, Any]:
        return self.accountant.summary

    def state_dict(self) -> dict:
        return self.accountant.state_dict()

    def replay(self, history: list[dict]) -> None:
        self.accountant.replay(history)

    def norms_of(self, cid: int) -> list[float]:
        """The norms before clipping of client ``cid``'s latest release or DP-SGD steps (taken)."""
        return self._norms.pop(cid, [])

    def add_norms(self, cid: int, norms: list[float]) -> None:
        """Norms a client's node reported (Flower): :meth:`after_round` reports them."""
        self._norms[cid] = list(norms)

    def after_round(self, t: int, participants: list[int], gather: Callable | None = None) -> dict[str, Any]:
        norms = gather(self._norms) if gather else self._norms
        self._norms = {}
        return self.accountant.account(t, participants, norms)


class NoisyUploads(PrivateTraining):
    """``client_upload``: plain local training; the change of what a client uploads, over all its
    tensors together, clipped to S and noised with N(0, z²S²) (see the module docstring)."""

    def __init__(self, inner: LocalTraining, accountant: Accountant, seed: int, init: Payload) -> None:
        super().__init__(inner, accountant, seed)
        self.init = {k: v.detach().cpu() for k, v in init.items()}
        """The method's public initial values (:meth:`ClientModule.global_init`): a reference."""

    def train(self, module: ClientModule, cid: int, t: int, epochs: int) -> None:
        self.inner.train(module, cid, t, epochs)

    def release(self, t: int, cid: int, upload: Payload, payload: Payload) -> Payload:
        """What the server receives instead of ``upload``: reference + clip(change) + noise."""
        if not upload:
            return upload
        ref = {
            k: (payload[k] if k in payload else self.init.get(k, torch.zeros_like(v))).detach().cpu()
            for k, v in upload.items()
        }
        change = {k: v.detach().cpu() - ref[k].to(v.dtype) for k, v in upload.items()}
        a = self.accountant
        noisy, norm = clip_and_noise(change, a.clip, a.noise_multiplier, torch_generator(self.seed, "dp", t, cid))
        self._norms[cid] = [norm]
        return {k: (ref[k].to(noisy[k].dtype) + noisy[k]).to(upload[k].dtype) for k in upload}


class RecordDPSGD(PrivateTraining):
    """``record_sgd``: DP-SGD in place of the local training (:func:`fedmoap.federation.dp_sgd.dp_sgd`);
    the upload leaves as it is (post-processing of DP-trained parameters)."""

    def train(self, module: ClientModule, cid: int, t: int, epochs: int) -> None:
        a = self.accountant
        self._norms[cid] = dp_sgd(
            module, self.data, cid, t, epochs, self.fabric, a.clip, a.noise_multiplier, self.seed, self.batch_size
        )


def private_training(
    args: DPArgs,
    *,
    seed: int,
    method: Method,
    module: ClientModule,
    inner: LocalTraining,
    schedule: Schedule,
    trainers: Callable[[int], list[int]],
    state: dict | None = None,
) -> PrivateTraining:
    """The ``dp`` section's mechanism around ``inner``, with its accountant: z given, solved for
    the steps the planned ``fed.rounds`` take (``trainers(t)``: who trains in round t), or a
    checkpoint's (``state``). Asks a fresh client whether the method uploads or trains anything
    (a mechanism with nothing to touch spends no budget)."""
    data, init = inner.data, module.global_init()
    module.load_client(0, None)
    if args.mode == "client_upload":
        active = bool(module.upload()) and method.trains

        def sample_rate(cid: int) -> float:
            return 1.0

        def steps_of(cid: int, t: int) -> int:
            return 1 if active else 0

    else:
        active = method.trains and bool(module.param_groups())

        def sample_rate(cid: int) -> float:
            return 1.0 / steps_per_epoch(data.train_size(cid), schedule.batch_size)

        def steps_of(cid: int, t: int) -> int:
            if not active:
                return 0
            epochs = method.local_epochs(t, schedule.local_epochs)
            return epochs * steps_per_epoch(data.train_size(cid), schedule.batch_size)

    planned = {c: 0 for c in range(data.num_clients)}
    for t in range(1, schedule.rounds + 1):
        for c in trainers(t):
            planned[c] += steps_of(c, t)
    accountant = Accountant(
        args,
        sample_rate=sample_rate,
        steps_of=steps_of,
        planned=planned,
        rounds=schedule.rounds,
        active=active,
        state=state,
    )
    if args.mode == "client_upload":
        return NoisyUploads(inner, accountant, seed, init)
    return RecordDPSGD(inner, accountant, seed)


def _larger(a: float | None, b: float | None) -> bool:
    """a > b, None being infinite."""
    return b is not None and (a is None or a > b)
