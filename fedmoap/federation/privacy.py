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
multiplier, and an upload's keys (FedMGP's name the groups a client shares).

Methods whose server folds client statistics (PEP-FedPT's class prototypes:
:meth:`~fedmoap.methods.base.Method.collects_statistics`) are refused: exact per-class sums and
counts would reach the server outside both mechanisms and their accountant.

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
    from fedmoap.federation.config import DPArgs
    from fedmoap.federation.schedule import Schedule
    from fedmoap.inputs.federated_data import FederatedData
    from fedmoap.methods.base import ClientModule, Method, Payload


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


# ------------------------------------------------------------------------------ the run's view
class Privacy(LocalTraining):
    """A run's DP mechanism and accountant around its plain local training (``dp.mode`` not
    ``off``), as Flower's DP wrappers wrap a strategy.

    The round loop calls :meth:`train` and :meth:`release` for each participant, as it would a
    plain :class:`~fedmoap.federation.local.LocalTraining`: ``record_sgd`` replaces the training by DP-SGD,
    ``client_upload`` trains plainly and clips and noises the upload. :meth:`after_round` accounts
    each round; the accountant's state is a function of the rounds' participants, so
    :meth:`replay` rebuilds it on resume. ``trainers(t)`` is who trains in round ``t`` (the
    federation's one answer); by default the method's choice from the schedule's draw.
    """

    def __init__(
        self,
        args: DPArgs,
        *,
        seed: int,
        method: Method,
        module: ClientModule,
        data: FederatedData,
        schedule: Schedule,
        state: dict | None = None,
        inner: LocalTraining | None = None,
        trainers: Callable[[int], list[int]] | None = None,
    ) -> None:
        self.inner = inner
        """The plain local training this wraps (``client_upload`` trains with it)."""
        self.trainers = trainers or self.participants
        self.args = effective(args)
        self.mode, self.adjacency = args.mode, ADJACENCY[args.mode]
        self.relation = args.adjacency
        self.sensitivity = 2.0 if args.adjacency == "replace" else 1.0
        """Sensitivity in units of the clip norm: replacing one client (record) moves the clipped
        sum by up to twice the clip norm, adding or removing one by up to the clip norm."""
        self.clip, self.delta = float(args.clip), self.args.delta
        self.seed, self.method, self.data, self.schedule = seed, method, data, schedule
        self.num_clients = data.num_clients
        self.init = {k: v.detach().cpu() for k, v in module.global_init().items()}
        module.load_client(0, None)
        self.uploads_something = bool(module.upload()) and method.trains
        self.trains_something = method.trains and bool(module.param_groups())
        self.steps: dict[int, int] = {}
        self.notes: list[str] = []
        planned = self.planned_steps(schedule.rounds)
        if state is not None and state.get("noise_multiplier") is not None:
            self.noise_multiplier = float(state["noise_multiplier"])
        elif self.args.noise_multiplier is not None:
            self.noise_multiplier = float(self.args.noise_multiplier)
        else:
            plans = [(self.sample_rate(c), s) for c, s in planned.items() if s > 0]
            self.noise_multiplier = self.sensitivity * (
                solve_noise_multiplier(self.args.epsilon, self.delta, plans, self.args.accountant) if plans else 0.0
            )
        if self.args.epsilon is not None and self.noise_multiplier > 0:
            worst = max(
                (
                    epsilon(self.accounted_z, self.sample_rate(c), s, self.delta, self.args.accountant) or math.inf
                    for c, s in planned.items()
                    if s > 0
                ),
                default=0.0,
            )
            if worst > self.args.epsilon + 0.02:
                self.notes.append(
                    f"z = {self.noise_multiplier:.4g} was solved for fewer rounds than "
                    f"fed.rounds {schedule.rounds} (an extended run): epsilon will reach "
                    f"{worst:.3g}, above dp.epsilon {self.args.epsilon:g}"
                )
        if not self.active:
            self.notes.append(
                "the method uploads nothing: the server receives nothing to protect "
                "(epsilon 0 for the uploads; the clients' models are not protected)"
                if self.mode == "client_upload"
                else "the method trains nothing: no private data is used (epsilon 0)"
            )
        self._norms: dict[int, list[float]] = {}
        self.summary: dict[str, Any] = {}
        self._update_summary()

    @property
    def accounted_z(self) -> float:
        """The noise multiplier the accountant sees: noise std over the sensitivity."""
        return self.noise_multiplier / self.sensitivity

    @property
    def active(self) -> bool:
        """Whether the mechanism touches anything (an upload to release, parameters to train)."""
        return self.uploads_something if self.mode == "client_upload" else self.trains_something

    # ----- plan and state
    def sample_rate(self, cid: int) -> float:
        if self.mode == "client_upload":
            return 1.0
        return 1.0 / steps_per_epoch(self.data.train_size(cid), self.schedule.batch_size)

    def steps_of(self, cid: int, t: int) -> int:
        """Mechanism applications to client ``cid`` when it participates in round ``t``."""
        if not self.active:
            return 0
        if self.mode == "client_upload":
            return 1
        epochs = self.method.local_epochs(t, self.schedule.local_epochs)
        return epochs * steps_per_epoch(self.data.train_size(cid), self.schedule.batch_size)

    def participants(self, t: int) -> list[int]:
        return self.method.participants(self.schedule.participants(t), self.num_clients, t)

    def planned_steps(self, rounds: int) -> dict[int, int]:
        steps = {c: 0 for c in range(self.num_clients)}
        for t in range(1, rounds + 1):
            for c in self.trainers(t):
                steps[c] += self.steps_of(c, t)
        return steps

    def state_dict(self) -> dict:
        return {"noise_multiplier": self.noise_multiplier}

    def replay(self, history: list[dict]) -> None:
        """The accountant after the recorded rounds (resume)."""
        for record in history:
            for c in record["participants"]:
                self.steps[c] = self.steps.get(c, 0) + self.steps_of(c, record["round"])
        self._update_summary()

    # ----- mechanisms
    def release(self, t: int, cid: int, upload: Payload, payload: Payload) -> Payload:
        """client_upload: what the server receives instead of ``upload``."""
        if self.mode != "client_upload" or not upload:
            return upload
        ref = {
            k: (payload[k] if k in payload else self.init.get(k, torch.zeros_like(v))).detach().cpu()
            for k, v in upload.items()
        }
        change = {k: v.detach().cpu() - ref[k].to(v.dtype) for k, v in upload.items()}
        noisy, norm = clip_and_noise(change, self.clip, self.noise_multiplier, torch_generator(self.seed, "dp", t, cid))
        self._norms[cid] = [norm]
        return {k: (ref[k].to(noisy[k].dtype) + noisy[k]).to(upload[k].dtype) for k in upload}

    def train(self, module: ClientModule, cid: int, t: int, epochs: int) -> None:
        """The client's local training: DP-SGD (record_sgd), else the wrapped plain training."""
        if self.mode != "record_sgd":
            self.inner.train(module, cid, t, epochs)
            return
        self._norms[cid] = dp_sgd(
            module,
            self.data,
            cid,
            t,
            epochs,
            self.inner.fabric,
            self.clip,
            self.noise_multiplier,
            self.seed,
            self.schedule.batch_size,
        )

    def norms_of(self, cid: int) -> list[float]:
        """The norms before clipping of client ``cid``'s latest release or DP-SGD steps (taken:
        a node hands them to the server, which accounts the round)."""
        return self._norms.pop(cid, [])

    def add_norms(self, cid: int, norms: list[float]) -> None:
        """Norms a client's node reported (Flower): :meth:`after_round` reports them."""
        self._norms[cid] = list(norms)

    # ----- accounting
    def after_round(self, t: int, participants: list[int], gather=None) -> dict[str, Any]:
        """Account round ``t``; the round's ``results.json`` entries (ε so far, the worst
        client's; clipping diagnostics of this round, which are not private)."""
        for c in participants:
            self.steps[c] = self.steps.get(c, 0) + self.steps_of(c, t)
        norms = gather(self._norms) if gather else self._norms
        self._norms = {}
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


def _larger(a: float | None, b: float | None) -> bool:
    """a > b, None being infinite."""
    return b is not None and (a is None or a > b)
