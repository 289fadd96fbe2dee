"""What every method shares: the client module, the server and their contract.

A method is one small file with a ``ClientModule`` subclass (what a client trains and uploads) and
a ``Server`` subclass (what it sends and how it aggregates). One client module exists per process:
a client's trainable state is loaded into it before the client trains or is evaluated and saved to
the :class:`~fedmoap.store.ClientStore` after; the backbone is shared and never copied.

Round protocol, as the orchestrator drives it::

    payload = server.payload(cid)            # download, computed from last round's server state
    module.load_client(cid, store.get(cid))  # None -> fresh init derived from (seed, cid)
    module.receive(payload)                  # e.g. prompt <- global prompt, experts
    ... local epochs of training_step ...
    upload = module.upload()                 # tensors sent to the server
    store.put(cid, module.client_state())
    server.aggregate({cid: upload}, {cid: n_train})
    # evaluation, for every client:
    module.load_client(cid, store.get(cid)); module.prepare_eval(server.eval_payload(cid))
"""
from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from fedmoap.backbones.base import Backbone
from fedmoap.config import RunConfig
from fedmoap.seeding import torch_generator

Payload = dict[str, Tensor]


def payload_bytes(payload: Payload) -> int:
    """Bytes a payload takes on the wire (raw tensor data)."""
    return sum(t.numel() * t.element_size() for t in payload.values())


class ClientModule(L.LightningModule):
    """A client's model: the shared frozen backbone plus the trainable parts a method defines.

    Subclasses create their trainable parameters in ``__init__``, initialise them in
    :meth:`reset`, and implement :meth:`text_features` and :meth:`logits`.
    """

    trains: ClassVar[bool] = True

    def __init__(self, backbone: Backbone, classnames: list[str], cfg: RunConfig) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", backbone)  # shared, frozen: not a submodule
        self.cfg = cfg
        self.num_classes = len(classnames)
        self.classnames = classnames
        self.acc = MulticlassAccuracy(num_classes=self.num_classes, average="micro",
                                      sync_on_compute=False)
        self.client_id: int | None = None
        self._eval_text: Any = None

    # ----- per-client state -----------------------------------------------------------------
    def reset(self, cid: int) -> None:
        """Fresh trainable state for a client seen for the first time (derived from seed, cid)."""

    def load_client(self, cid: int, state: dict | None) -> None:
        """Make this module client ``cid``: its stored state, or a fresh one if it has none."""
        self.client_id = cid
        self._eval_text = None
        if state is None:
            self.reset(cid)
        else:
            with torch.no_grad():
                for name, p in self.named_parameters():
                    p.copy_(state["params"][name])
            self.load_extra_state(state.get("extra", {}))

    def client_state(self, optimizer_state: dict | None = None) -> dict:
        """What the client keeps between rounds (parameters, extras, optimizer state), on CPU."""
        return {"params": {n: p.detach().cpu().clone() for n, p in self.named_parameters()},
                "extra": self.extra_state(), "optim": _cpu_copy(optimizer_state)}

    def extra_state(self) -> dict[str, Tensor]:
        """Non-parameter tensors the client keeps (e.g. downloaded experts)."""
        return {}

    def load_extra_state(self, extra: dict[str, Tensor]) -> None:
        pass

    # ----- communication --------------------------------------------------------------------
    def receive(self, payload: Payload) -> None:
        """Start of local training: take what the server sent."""

    def upload(self) -> Payload:
        """End of local training: what goes to the server."""
        return {}

    def prepare_eval(self, payload: Payload, has_state: bool) -> None:
        """Before evaluation: ``payload`` is the server's ``eval_payload``; ``has_state`` says
        whether the client has trained before (else it holds a fresh state)."""

    # ----- model ----------------------------------------------------------------------------
    def text_features(self) -> Any:
        """Class text features for the current trainable state (differentiable)."""
        raise NotImplementedError

    def logits(self, image: Tensor, text: Any) -> Tensor:
        """(B, D) L2-normalised image features -> (B, C) logits."""
        raise NotImplementedError

    def forward(self, image: Tensor) -> Tensor:
        return self.logits(image, self.text_features())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        image, label = batch
        return F.cross_entropy(self(image), label)

    def on_validation_start(self) -> None:
        self.acc.reset()
        with torch.no_grad():
            self._eval_text = self.text_features()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        image, label = batch
        with torch.no_grad():
            self.acc.update(self.logits(image, self._eval_text).argmax(-1), label)

    def param_groups(self) -> list[dict]:
        """Optimiser parameter groups; a group with ``cosine=True`` is annealed over local epochs."""
        return []

    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        groups = self.param_groups()
        if not groups:
            return None
        for g in groups:
            g["base_lr"] = g["lr"]
        t = self.cfg.train
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


class PromptClient(ClientModule):
    """A client with one learnable class-agnostic context (CoOp layout) and a cosine classifier."""

    def __init__(self, backbone: Backbone, classnames: list[str], cfg: RunConfig) -> None:
        super().__init__(backbone, classnames, cfg)
        p = cfg.prompt
        init = backbone.embed_tokens(p.ctx_init) if p.ctx_init else None
        n_ctx = init.shape[0] if init is not None else p.n_ctx
        self.slots = backbone.prepare_prompts([p.template.format(c) for c in classnames], n_ctx)
        self.ctx = nn.Parameter(torch.zeros(n_ctx, backbone.ctx_width))

    def reset(self, cid: int) -> None:
        """Context starts as the server's initial prompt; :meth:`receive` overwrites it anyway."""
        with torch.no_grad():
            self.ctx.copy_(initial_prompt(self.backbone, self.cfg))

    def text_features(self) -> Tensor:
        return F.normalize(self.backbone.encode_prompts(self.slots, self.ctx), dim=-1)

    def logits(self, image: Tensor, text: Tensor) -> Tensor:
        return self.backbone.logit_scale * image @ text.t()

    def param_groups(self) -> list[dict]:
        return [{"params": [self.ctx], "lr": self.cfg.train.lr, "cosine": True}]


def initial_prompt(backbone: Backbone, cfg: RunConfig) -> Tensor:
    """The run's initial context: the embedded ``ctx_init`` words, or N(0, 0.02) from the seed."""
    if cfg.prompt.ctx_init:
        return backbone.embed_tokens(cfg.prompt.ctx_init).detach().clone()
    gen = torch_generator(cfg.seed, "initial_prompt")
    return torch.randn(cfg.prompt.n_ctx, backbone.ctx_width, generator=gen) * 0.02


class Server:
    """Server-side state of a method. The default holds nothing and sends nothing (CoOp)."""

    def __init__(self, cfg: RunConfig, init_prompt: Tensor) -> None:
        self.cfg = cfg
        self.init_prompt = init_prompt

    def payload(self, cid: int) -> Payload:
        """What participant ``cid`` downloads at the start of a round."""
        return {}

    def eval_payload(self, cid: int) -> Payload:
        """What client ``cid`` needs from the server to be evaluated (not counted as traffic)."""
        return {"global": self.init_prompt}

    def aggregate(self, uploads: dict[int, Payload], weights: dict[int, int]) -> None:
        """End of round: fold in the participants' uploads (weights: training-set sizes)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FedAvgServer(Server):
    """Keeps a global prompt, the training-size-weighted mean of the last participants' prompts."""

    def __init__(self, cfg: RunConfig, init_prompt: Tensor) -> None:
        super().__init__(cfg, init_prompt)
        self.global_prompt = init_prompt.clone()

    def payload(self, cid: int) -> Payload:
        return {"global": self.global_prompt}

    def eval_payload(self, cid: int) -> Payload:
        return {"global": self.global_prompt}

    def aggregate(self, uploads: dict[int, Payload], weights: dict[int, int]) -> None:
        if uploads:
            ids = sorted(uploads)
            w = torch.tensor([float(weights[i]) for i in ids], dtype=torch.float64)
            stacked = torch.stack([uploads[i]["prompt"].double() for i in ids])
            mean = (stacked * (w / w.sum()).view(-1, 1, 1)).sum(0)
            self.global_prompt = mean.to(self.global_prompt.dtype)

    def state_dict(self) -> dict:
        return {"global": self.global_prompt}

    def load_state_dict(self, state: dict) -> None:
        self.global_prompt = state["global"]


def _cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor on the CPU (optimiser states alias live buffers)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj
