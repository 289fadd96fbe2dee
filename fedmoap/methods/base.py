"""The method API: a :class:`Method` (its knobs and declarations), a :class:`ClientModule` (what a
client trains, keeps, downloads and uploads) and a :class:`Server` (what it sends and aggregates).

The round protocol these hooks are called in, the shared/private split and the hooks' order are
in ``docs/method-api.md``; a walk-through in ``docs/adding-a-method.md``. The mechanism behind
the API lives apart: aggregation maths in :mod:`fedmoap.aggregate`, the local optimizer in
:mod:`fedmoap.methods.optim`, backbone checks several methods share in :mod:`fedmoap.methods.checks`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# re-exported (``x as x``): method files import them from here
from fedmoap.aggregate import payload_bytes as payload_bytes
from fedmoap.aggregate import weighted_mean
from fedmoap.backbones.base import Backbone
from fedmoap.methods.checks import text_depth_problems as text_depth_problems
from fedmoap.methods.checks import vision_prompt_problems as vision_prompt_problems
from fedmoap.methods.declarations import UNDECLARED, Declares
from fedmoap.methods.optim import ParamGroup, cpu_copy, local_sgd, lr_schedule, round_cosine

if TYPE_CHECKING:
    from fedmoap.config.sections import TrainArgs

__all__ = [
    "INPUTS",
    "ClientModule",
    "FedAvgServer",
    "HeldOut",
    "Method",
    "ParamGroup",
    "Payload",
    "RunContext",
    "Server",
    "payload_bytes",
    "text_depth_problems",
    "vision_prompt_problems",
]

Payload = dict[str, Tensor]
INPUTS = frozenset({"features", "tokens", "pixels"})
"""What a client can read besides the label: cached pooled image features, cached per-patch token
features, or transformed images (for methods that put prompts inside the image tower)."""


@dataclass(frozen=True)
class RunContext:
    """What a method's client and server know of the run (not the whole config)."""

    seed: int
    num_clients: int
    train: TrainArgs
    keep_optimizer_state: bool
    """The resolved policy: ``train.optimizer_state``, or the method's default."""
    rounds: int | None = None
    """``fed.rounds``: the run's planned length (knobs placed relative to it read it)."""


@dataclass(frozen=True)
class HeldOut:
    """A never-trained (held-out) client as evaluation sees it: what it may ask of the server and
    do with its own training split. Nothing it does is stored, uploaded or aggregated."""

    cid: int
    epochs: int
    """R_adapt: epochs of few-shot adaptation (``eval.adaptation_epochs``)."""
    download: Callable[[Payload | None], Payload]
    """``download(upload)``: the server's :meth:`Server.unseen_payload` for this client."""
    train: Callable[[int, str], None]
    """``train(n, stream)``: n epochs of local training on its training split with a fresh
    optimizer, batches from the random stream (seed, stream, t, cid)."""
    train_labels: Tensor
    """The labels of its training split."""
    peer_mean: Callable[[], dict[str, Tensor] | None]
    """The unweighted mean of the training clients' kept parameters (by parameter name; None
    while no client keeps any)."""


class Method:
    """A federated method: its knobs are the dataclass fields of a subclass.

    Subclasses set ``name`` (the short name for ``--method``), ``client_class`` and
    ``server_class``, and may override the class-level declarations below.
    """

    name: ClassVar[str] = ""
    inputs: ClassVar[frozenset[str]] = frozenset({"features"})
    """What the client reads besides the label (a subset of :data:`INPUTS`); a method whose
    inputs depend on its knobs overrides :meth:`required_inputs` instead."""
    trains: ClassVar[bool] = True
    """False for methods with nothing to train (zero-shot): no round trains anyone."""
    keep_optimizer_state: ClassVar[bool] = True
    """Default optimizer-state policy (``train.optimizer_state`` overrides it)."""
    classifier: ClassVar[str] = "text features"
    """What scores an image against the classes: the class names' ``text features`` (CLIP's way)
    or a trained ``linear head``; a study table shows rows that differ in it."""
    declares: ClassVar[Declares] = UNDECLARED
    """What the method does, as far as combining it with other features goes (what a record's
    loss reads, what the server reads, knobs indexed by round or client): stated in the method's
    own class body, never inherited (:mod:`fedmoap.methods.declarations`)."""
    client_class: ClassVar[type[ClientModule]]
    server_class: ClassVar[type[Server]]

    def spec(self) -> dict[str, Any]:
        """``{class_path, init_args}``: how config files name this method and its knobs."""
        cls = type(self)
        return {
            "class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": {f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
        }

    def declared(self) -> Declares:
        """This configuration's declarations: the class's own ``declares`` (a subclass that states
        none gets the safe :data:`~fedmoap.methods.declarations.UNDECLARED`); a method whose facts
        depend on its knobs overrides this."""
        return type(self).__dict__.get("declares", UNDECLARED)

    def required_inputs(self) -> frozenset[str]:
        """What this configuration of the method reads (default: the class's ``inputs``)."""
        return type(self).inputs

    def problems(self) -> list[str]:
        """Range and combination checks of the knobs, each message naming ``method.<knob>``."""
        return []

    def participants(self, sampled: list[int], num_clients: int, t: int) -> list[int]:
        """Who trains in round ``t``; ``sampled`` is the run's seeded draw (``fed.participation``).
        A local-only method can train everyone, or nobody after the first round."""
        return sampled if self.trains else []

    def local_epochs(self, t: int, default: int) -> int:
        """Local epochs of round ``t`` (``train.local_epochs`` unless the method says otherwise)."""
        return default

    # --- client statistics (seed-methods) ---
    shares_statistics: ClassVar[bool] = True
    """Whether what :meth:`ClientModule.statistics` returns reaches the server (False: the pass
    only lets each client record something of its own data, e.g. its classes, and sends nothing;
    such a method runs under DP)."""

    def collects_statistics(self, t: int) -> bool:
        """Whether the server folds client statistics (:meth:`ClientModule.statistics`,
        :meth:`Server.fold_statistics`) at step ``t``: ``t = 0`` is the set-up pass over every
        client at the start of round 1 (the server state then carries them, so a resumed run does
        not repeat it); ``t >= 1`` is after round ``t``'s aggregation, over its participants.
        Default: never."""
        return False

    # --- end client statistics ---

    def backbone_problems(self, backbone: Backbone) -> list[str]:
        """What this backbone lacks for this method (e.g. a ViT image tower for vision prompts)."""
        return []

    def build_client(self, backbone: Backbone, classnames: list[str], run: RunContext) -> ClientModule:
        return self.client_class(self, backbone, classnames, run)

    def build_server(self, init: Payload, run: RunContext) -> Server:
        """``init``: the shared tensors' initial values (:meth:`ClientModule.global_init`)."""
        return self.server_class(self, init, run)


class ClientModule(L.LightningModule):
    """A client's model: the shared frozen backbone plus the trainable parts a method defines.

    Subclasses create their trainable parameters in ``__init__``, initialise them in
    :meth:`reset`, declare which of them are shared with the server (:attr:`shared_params`) and
    implement :meth:`forward` (logits of a batch, differentiable). The declarations below are
    class-level; one that depends on the method's knobs may be set on the instance in ``__init__``.
    """

    personal_eval: ClassVar[bool] = True
    """False if evaluation depends on the server's eval payload alone (not on the client's own
    state): one evaluation set-up is then shared by all clients of a round."""
    keeps_statistics: ClassVar[bool] = False
    """True if :meth:`statistics` changes what the client keeps (e.g. its label histogram): the
    set-up pass then stores every client's state (as of round 0)."""
    pure_training_step: ClassVar[bool] = True
    """False if :meth:`training_step` records what it sees (e.g. pFedPrompt's feature cache):
    DP-SGD then takes one backward pass per example instead of ``torch.func.vmap``, which must
    not let its batched tensors escape."""
    keeps_parameters: ClassVar[bool] = True
    """False if the client keeps no trainable tensor between rounds (its whole model is downloaded
    every time, e.g. PEP-FedPT's): its stored state is then its extras and optimizer state alone,
    and loading it starts from :meth:`reset`."""
    shared_params: ClassVar[Mapping[str, str]] = {}
    """What the client shares with the server: payload key -> the name of the parameter it is
    downloaded into and uploaded from (a submodule's name shares each of its parameters, under
    ``key.<parameter name>``), in upload order; e.g. ``{"prompt": "ctx"}``. The default
    :meth:`receive` and :meth:`prepare_eval` copy exactly these keys of a payload (any other key is
    left to the method) and the default :meth:`upload` sends them; :meth:`shared_parameters`
    resolves the names, and a method whose shared set depends on its knobs overrides it instead."""

    def __init__(self, method: Method, backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", backbone)  # shared, frozen: not a submodule
        self.method, self.run = method, run
        self.classnames = classnames
        self.num_classes = len(classnames)
        self.client_id: int | None = None
        self.fresh = True
        """The current client has no stored state (never trained)."""
        self._optim_state: dict | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._eval_cache: Any = None
        self.scaler_state: dict | None = None
        """The loss scaler's state (``16-mixed``) of the current client: part of what it keeps."""
        self.planned_round: int | None = None
        """The round this training belongs to."""
        self.planned_by_round = True
        """Whether this training's lr follows ``train.lr_schedule: rounds`` (a round's federated
        training) or anneals over its own epochs (evaluation-time training)."""
        self.planned_epochs: int | None = None
        """Epochs of the local training about to run (federated training, fine-tuning, adaptation
        or DP-SGD), set by the trainer before :meth:`configure_optimizers`: the cosine's period."""

    # ----- per-client state -----------------------------------------------------------------
    def reset(self, cid: int) -> None:
        """Fresh trainable state for a client seen for the first time (from seed and cid only;
        also the start of every load of a client without :attr:`keeps_parameters`)."""

    def global_init(self) -> Payload:
        """Initial values of the shared tensors, the same for every client (from the run seed)."""
        return {}

    def load_client(self, cid: int, state: dict | None) -> None:
        """Make this module client ``cid``: its stored state (parameters, extras and, under the
        keep policy, optimizer state), or a fresh one if it has none."""
        self.client_id, self.fresh = cid, state is None
        self._optimizer, self._optim_state, self._eval_cache = None, None, None
        self.scaler_state = None if state is None else state.get("scaler")
        if state is None or not self.keeps_parameters:
            self.reset(cid)
        if state is None:
            return
        if self.keeps_parameters:
            params = dict(self.named_parameters())
            if set(params) != set(state["params"]):
                raise ValueError(
                    f"client {cid}: stored parameters {sorted(state['params'])} do not "
                    f"match this method's {sorted(params)}"
                )
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(state["params"][name])
        self.load_extra_state(state.get("extra", {}))
        if self.run.keep_optimizer_state:
            self._optim_state = state.get("optim")

    def client_state(self) -> dict:
        """What the client keeps between rounds, on CPU: parameters (unless not
        :attr:`keeps_parameters`), extras, optimizer state (under the keep policy)."""
        optim = None
        if self.run.keep_optimizer_state:
            optim = self._optimizer.state_dict() if self._optimizer is not None else self._optim_state
        params = {n: p.detach().cpu().clone() for n, p in self.named_parameters()} if self.keeps_parameters else {}
        state = {"params": params, "extra": self.extra_state(), "optim": cpu_copy(optim)}
        if self.scaler_state is not None:
            state["scaler"] = self.scaler_state
        return state

    def extra_state(self) -> dict[str, Tensor]:
        """Non-parameter tensors the client keeps (e.g. downloaded experts)."""
        return {}

    def load_extra_state(self, extra: dict[str, Tensor]) -> None:
        pass

    # ----- communication --------------------------------------------------------------------
    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """Payload key -> the parameter it is downloaded into and uploaded from, in upload order:
        :attr:`shared_params` resolved on this module."""
        out: dict[str, nn.Parameter] = {}
        for key, name in self.shared_params.items():
            part = getattr(self, name)
            if isinstance(part, nn.Module):
                out.update({f"{key}.{n}": p for n, p in part.named_parameters()})
            else:
                out[key] = part
        return out

    def load_shared(self, payload: Payload) -> None:
        """Copy each of :meth:`shared_parameters`' keys of ``payload`` into its parameter (the
        parameter keeps its dtype and device); other keys are not read."""
        with torch.no_grad():
            for key, p in self.shared_parameters().items():
                p.copy_(payload[key])

    def receive(self, payload: Payload) -> None:
        """Start of local training: take what the server sent. Default: :meth:`load_shared`."""
        self.load_shared(payload)

    def upload(self) -> Payload:
        """End of local training: what goes to the server. Default: a detached CPU copy of each
        of :meth:`shared_parameters`."""
        return {key: p.detach().cpu().clone() for key, p in self.shared_parameters().items()}

    def prepare_eval(self, payload: Payload) -> None:
        """Before evaluation: ``payload`` is the server's ``eval_payload`` for this client.
        Default: :meth:`load_shared` (the server's current shared parameters with the client's
        own private ones)."""
        self.load_shared(payload)

    def statistics(self, batches: Iterable[dict[str, Tensor]]) -> Payload:
        """What the current client tells the server about its training data (e.g. per-class
        feature sums and counts), from its plain training batches (no augmentation, view 0, labels
        included), under ``no_grad``, without training; counted as upload traffic. Called only if
        the method's ``collects_statistics``; the module has been prepared as for evaluation."""
        return {}

    def eval_adaptation_epochs(self, t: int, final: bool) -> int:
        """Epochs of local training at evaluation time, between :meth:`prepare_eval` and
        :meth:`begin_eval` (PromptFL+FT's fine-tuning of the global prompt; few-shot adaptation).
        ``t``: the round being evaluated; ``final``: whether it is the run's last. 0 (default)
        evaluates the model as it is. The adapted state is never stored nor uploaded, so a method
        that adapts must set ``personal_eval`` (each client adapts its own copy)."""
        return 0

    def begin_adaptation(self) -> None:
        """Before evaluation-time training: a fresh optimizer (the client's kept optimizer state
        belongs to its federated training and is not touched)."""
        self._optimizer, self._optim_state = None, None

    def prepare_unseen(self, held: HeldOut) -> None:
        """Make this fresh module (``load_client(cid, None)``) the never-trained client
        ``held.cid`` as evaluated without adaptation: the method's global component. Default:
        :meth:`prepare_eval` with the server's ``unseen_payload``."""
        self.prepare_eval(held.download(None))

    def adapt_unseen(self, held: HeldOut) -> None:
        """Few-shot adaptation of this fresh module as the never-trained client ``held.cid``:
        the method's first-time-participant procedure, without uploading. Default:
        :meth:`receive` the server's ``unseen_payload`` and train ``held.epochs`` epochs."""
        self.receive(held.download(None))
        held.train(held.epochs, "adapt")

    # ----- model ----------------------------------------------------------------------------
    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, C) logits of a batch (keys: the method's inputs), differentiable."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        return F.cross_entropy(self(batch), batch["label"])

    def eval_state(self) -> Any:
        """What evaluation computes once per client (e.g. class text features); None by default."""
        return None

    def begin_eval(self) -> None:
        """Compute :meth:`eval_state` once; :meth:`predict` then uses it for every batch."""
        with torch.no_grad():
            self._eval_cache = self.eval_state()

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, C) logits for evaluation; ``batch`` holds the inputs but never the label."""
        return self(batch)

    def set_classnames(self, classnames: list[str]) -> None:
        """Make the label space ``classnames`` (logit k = ``classnames[k]``): rebuild whatever
        depends on the class names (prompt slots, cached text features) so that
        :meth:`begin_eval` and :meth:`predict` use the new names. Used by evaluation modes that
        test on classes the client never trained on (base-to-novel). A method whose client cannot
        classify unseen class names (a linear head, per-class state without a fallback) leaves
        this unimplemented; such methods are refused by ``eval.modes`` base2novel."""
        raise NotImplementedError(f"{type(self).__name__} cannot evaluate on other class names")

    # ----- optimisation ---------------------------------------------------------------------
    def param_groups(self) -> list[ParamGroup]:
        """The trainable parameters, grouped by learning rate and schedule."""
        return []

    def dp_parameters(self) -> list[nn.Parameter]:
        """What DP-SGD (``dp.mode record_sgd``) differentiates, clips and noises. Default: every
        parameter of :meth:`param_groups`; DP-FPL: the factors its local prompt moves through."""
        return [p for g in self.param_groups() for p in g.params]

    def schedule_epochs(self) -> int:
        """The cosine's period: the epochs this training runs (:attr:`planned_epochs`), or
        ``train.local_epochs`` where no trainer set it."""
        return self.planned_epochs or self.run.train.local_epochs

    def round_factor(self) -> float | None:
        """``train.lr_schedule: rounds``: the lr factor of this training's round t, a cosine over
        ``train.lr_rounds`` rounds, ``0.5 (1 + cos(pi (t - 1) / R))``, constant within the round
        (rounds past R keep the last value); None for the per-training cosine (``local``) and
        for evaluation-time training, which is a training of its own."""
        return round_cosine(self.run.train, self.planned_round if self.planned_by_round else None)

    def configure_optimizers(self) -> dict | None:
        """SGD over :meth:`param_groups` (with the client's kept state, if any) and a LambdaLR
        schedule stepped once per local epoch, annealed to 0 over :meth:`schedule_epochs`
        (:mod:`fedmoap.methods.optim`)."""
        groups = self.param_groups()
        if not groups:
            return None
        self._optimizer = local_sgd(groups, self.run.train, self._optim_state)
        scheduler = lr_schedule(self._optimizer, groups, self.schedule_epochs(), self.round_factor())
        return {"optimizer": self._optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class Server:
    """Server-side state of a method. The default holds nothing and sends nothing (CoOp)."""

    def __init__(self, method: Method, init: Payload, run: RunContext) -> None:
        self.method, self.run = method, run
        self.init = init

    def payload(self, cid: int, t: int) -> Payload:
        """What participant ``cid`` downloads at the start of round ``t``."""
        return {}

    def prepare_round(self, t: int, clients: list[int]) -> None:
        """Round ``t``'s ``clients`` are about to download (:meth:`payload`), e.g. to search for
        all of them at once; the payloads must be what they would be without this call. Default:
        nothing."""

    def eval_payload(self, cid: int) -> Payload:
        """What client ``cid`` needs from the server to be evaluated (not counted as traffic)."""
        return {}

    def unseen_payload(self, cid: int, upload: Payload | None = None) -> Payload:
        """What the never-trained (held-out) client ``cid`` downloads: with ``upload`` None, its
        model before any training (default: :meth:`eval_payload`); with ``upload``, what a client
        that had just uploaded it would download next (pFedMoAP: its nearest experts). Changes
        no server state, keeps no upload, counts no traffic."""
        return self.eval_payload(cid)

    def aggregate(self, t: int, uploads: dict[int, Payload], weights: dict[int, int]) -> None:
        """End of round ``t``: fold in the participants' uploads (weights: training-set sizes)."""

    def fold_statistics(self, t: int, stats: dict[int, Payload]) -> None:
        """Fold in client statistics (:meth:`ClientModule.statistics`): ``t = 0`` every client's
        at set-up, ``t >= 1`` round ``t``'s participants' after aggregation. What it keeps must be
        in :meth:`state_dict` (checkpoints, several processes)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FedAvgServer(Server):
    """Keeps the shared tensors: the training-size-weighted mean of the last participants' uploads."""

    def __init__(self, method: Method, init: Payload, run: RunContext) -> None:
        super().__init__(method, init, run)
        self.global_state = {k: v.clone() for k, v in init.items()}

    def payload(self, cid: int, t: int) -> Payload:
        return dict(self.global_state)

    def eval_payload(self, cid: int) -> Payload:
        return dict(self.global_state)

    def aggregate(self, t: int, uploads: dict[int, Payload], weights: dict[int, int]) -> None:
        if uploads:
            self.global_state = {**self.global_state, **weighted_mean(uploads, weights, self.global_state)}

    def state_dict(self) -> dict:
        return {"global": dict(self.global_state)}

    def load_state_dict(self, state: dict) -> None:
        self.global_state = dict(state["global"])


# Method's own annotations, evaluated here where their names are defined: jsonargparse resolves a
# method's annotations in the method's module, where ClassVar or Server may be unimported; one
# unresolvable base annotation left every knob of every method unvalidated (any value accepted).
Method.__annotations__ = typing.get_type_hints(Method)
