"""PEP-FedPT (Yashwanth et al., TMLR 2026, arXiv 2510.25372), **as reconstructed** (the paper's
body and code are not public: every reconstructed choice, marked [R], is a knob), and its two VPT
baselines.

A ViT classifier: a shared prompt P_S (n_s tokens) enters the frozen image tower at the input; a
class-contextualised mixed prompt CCMP(x) = sum_c w_c(x) P_c (n_c tokens) enters at block l_c,
with w_c(x) = softmax_c(cos(z(x), mu_c) / tau + log(pi_k(c) + eps)): z(x) the frozen pooled image
feature (from the feature cache), mu_c the global class prototypes (server, from every client's
class means and counts, once before round 1), pi_k the client's class prior (its training label
histogram, the only client-specific quantity; nothing trainable is kept per client); a linear
head on the pooled feature. Everything trainable is FedAvg'd; the test path never reads a label.

- ``pepfedpt``: the method; ``--method.ccmp false`` removes the class prompts and is exactly
- ``fedavg_vpt``: FedAvg of a shallow VPT prompt + linear head (SGPT's FedVPT baseline), and
- ``local_vpt``: the same classifier trained by each client alone (every client, every round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmoap.aggregate import weighted_mean
from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import ClientModule, FedAvgServer, HeldOut, Method, ParamGroup, Payload, RunContext, Server
from fedmoap.methods.checks import vision_prompt_problems
from fedmoap.methods.declarations import PROMPT_LEARNER, Declares
from fedmoap.seeding import torch_generator

__all__ = ["VPTHeadClient", "PEPFedPTServer", "VPTHead", "FedAvgVPT", "LocalVPT", "PEPFedPT"]


class VPTHeadClient(ClientModule):
    """P_S + (optional) class prompts + linear head on ``sqrt(D) * normalize(pooled feature)``."""

    method: "VPTHead"

    def __init__(self, method: "VPTHead", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        m, width, dim = method, backbone.vision_width, backbone.embed_dim
        self.ccmp = m.uses_ccmp()
        self.personal_eval = m.local or (self.ccmp and m.prior == "client")
        self.keeps_statistics = self.ccmp and m.prior == "client"
        self.keeps_parameters = m.local  # a federated client downloads its whole model every time
        self.shared = nn.Parameter(torch.zeros(m.shared_depth, m.shared_tokens, width))
        if self.ccmp:
            self.ccmp_block = m.ccmp_block(backbone.vision_layers)
            layers = backbone.vision_layers - self.ccmp_block if m.ccmp_deep else 1
            self.class_prompts = nn.Parameter(torch.zeros(layers, self.num_classes, m.class_tokens, width))
            self.register_buffer("prototypes", torch.zeros(self.num_classes, dim), persistent=False)
            self.prior_counts: Tensor | None = None
            """This client's training label histogram (n_{k,c}), from the set-up pass."""
            self._usage = torch.zeros(self.num_classes, dtype=torch.float64)
        self.head = nn.Linear(dim, self.num_classes)
        self._init: Payload | None = None

    # ----- state ------------------------------------------------------------------------------
    def global_init(self) -> Payload:
        """The server-seeded initial model, the same for every client (computed once)."""
        if self._init is None:
            m, seed = self.method, self.run.seed
            out = {"shared": self._prompt_init(self.shared.shape, torch_generator(seed, "vpt_shared_prompt"))}
            if self.ccmp:
                out["class_prompts"] = self._prompt_init(
                    self.class_prompts.shape, torch_generator(seed, "pep_class_prompts")
                )
            d = self.backbone.embed_dim
            if m.head_init == "text":  # zero-shot classifier: head(sqrt(D) x) = s * cos(x, t_c)
                slots = self.backbone.prepare_prompts([m.head_template.format(c) for c in self.classnames], 0)
                with torch.no_grad():
                    text = F.normalize(self.backbone.encode_prompts(slots).float(), dim=-1).cpu()
                out["head_weight"] = text * (self.backbone.logit_scale / math.sqrt(d))
                out["head_bias"] = torch.zeros(self.num_classes)
            else:  # nn.Linear's default: U(-1/sqrt(D), 1/sqrt(D)) for weight and bias
                gen, bound = torch_generator(seed, "vpt_head"), 1 / math.sqrt(d)
                out["head_weight"] = torch.rand(self.num_classes, d, generator=gen) * (2 * bound) - bound
                out["head_bias"] = torch.rand(self.num_classes, generator=gen) * (2 * bound) - bound
            if self.ccmp:
                out["prototypes"] = torch.zeros(self.num_classes, d)
            self._init = out
        return dict(self._init)

    def _prompt_init(self, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
        if self.method.prompt_init == "normal":
            return torch.randn(shape, generator=gen) * 0.02
        bound = math.sqrt(6.0 / (3 * 16 * 16 + self.backbone.vision_width))  # VPT's (16-px patches)
        return torch.rand(shape, generator=gen) * (2 * bound) - bound

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """Key -> the trainable tensor it names (what the server averages): all of them."""
        out = {"shared": self.shared, "head_weight": self.head.weight, "head_bias": self.head.bias}
        if self.ccmp:
            out["class_prompts"] = self.class_prompts
        return out

    def reset(self, cid: int) -> None:
        self.prior_counts = None
        self.receive(self.global_init(), keep_local=False)

    def receive(self, payload: Payload, keep_local: bool = True) -> None:
        """The downloaded model (a local-only client keeps its own)."""
        if not (self.method.local and keep_local):
            self.load_shared(payload)
        if self.ccmp:
            self.prototypes.copy_(payload["prototypes"])
            self._usage.zero_()

    def prepare_eval(self, payload: Payload) -> None:
        self.receive(payload)

    def adapt_unseen(self, held: HeldOut) -> None:
        """A first-time participant: its prior is its own training label histogram (what the
        set-up pass keeps; nothing goes to the server), then it trains on the downloaded model."""
        if self.ccmp:
            self.prior_counts = torch.bincount(held.train_labels.cpu(), minlength=self.num_classes).float()
        super().adapt_unseen(held)

    def upload(self) -> Payload:
        if self.method.local:
            return {}
        out = super().upload()
        if self.ccmp and self.method.class_prompt_agg == "usage":
            out["usage"] = self._usage.float().clone()
        return out

    def extra_state(self) -> dict[str, Tensor]:
        return {} if getattr(self, "prior_counts", None) is None else {"prior_counts": self.prior_counts}

    def load_extra_state(self, extra: dict[str, Tensor]) -> None:
        self.prior_counts = extra.get("prior_counts")

    # ----- statistics (set-up pass) -----------------------------------------------------------
    def statistics(self, batches) -> Payload:
        """Per-class sums of z(x) and counts over the client's training data; the counts are
        kept as the client's prior."""
        c = self.num_classes
        sums = torch.zeros(c, self.backbone.embed_dim, dtype=torch.float64)
        counts = torch.zeros(c, dtype=torch.float64)
        for batch in batches:
            z, y = self.weight_feature(batch).double().cpu(), batch["label"].cpu()
            sums.index_add_(0, y, z)
            counts.index_add_(0, y, torch.ones(len(y), dtype=torch.float64))
        self.prior_counts = counts.float()
        return {"sum": sums, "count": counts}

    # ----- model ------------------------------------------------------------------------------
    def weight_feature(self, batch: dict[str, Tensor]) -> Tensor:
        """z(x), L2-normalised: the cached frozen feature, or (``proto_feature: prompted``) the
        pooled feature of a no-grad pass with P_S alone."""
        if self.method.proto_feature == "frozen":
            return F.normalize(batch["features"].float(), dim=-1)
        with torch.no_grad():
            groups = [{j: self.shared[j] for j in range(self.method.shared_depth)}]
            return F.normalize(self.backbone.encode_image_prompted(batch["pixels"], groups).float(), dim=-1)

    def prior(self) -> Tensor:
        """pi_k (C,): the smoothed label histogram, or uniform."""
        m, c = self.method, self.num_classes
        if m.prior == "uniform" or self.prior_counts is None:  # (no set-up pass: unit tests)
            return torch.full((c,), 1.0 / c, device=self.prototypes.device)
        counts = self.prior_counts.to(self.prototypes.device) + m.prior_smoothing
        return counts / counts.sum().clamp_min(1e-12)

    def mixing_weights(self, z: Tensor) -> Tensor:
        """w(x) (B, C), rows summing to one; constant (no gradient)."""
        m = self.method
        mu = self.prototypes.to(z.dtype)
        if m.similarity == "cosine":
            score = z @ F.normalize(mu, dim=-1).t() / m.tau
        elif m.similarity == "dot":
            score = z @ mu.t() / m.tau
        else:  # gaussian: -||z - mu||^2 / (2 tau)
            score = -torch.cdist(z, mu).square() / (2 * m.tau)
        if m.prior_use == "log":
            score = score + torch.log(self.prior().to(z.dtype) + m.eps)
        if m.weights == "hard":
            return F.one_hot(score.argmax(-1), self.num_classes).to(z.dtype)
        if m.weights == "topk":
            k = min(m.topk, self.num_classes)
            top = score.topk(k, dim=-1)
            score = torch.full_like(score, float("-inf")).scatter(-1, top.indices, top.values)
        return torch.softmax(score, dim=-1)

    def logits(self, batch: dict[str, Tensor], label: Tensor | None = None) -> Tensor:
        """Logits of a batch; ``label`` only for the ablation ``train_weights: label``."""
        m = self.method
        groups = [{j: self.shared[j] for j in range(m.shared_depth)}]
        if self.ccmp:
            w = (
                F.one_hot(label, self.num_classes).float()
                if label is not None
                else self.mixing_weights(self.weight_feature(batch))
            ).detach()
            if self.training:
                self._usage += w.sum(0).double().cpu()
            mixed = torch.einsum("bc,lcnw->lbnw", w.to(self.class_prompts.dtype), self.class_prompts)
            groups.append({self.ccmp_block + i: mixed[i] for i in range(len(mixed))})
        pooled = self.backbone.encode_image_prompted(batch["pixels"], groups)
        return self.head(math.sqrt(pooled.shape[-1]) * F.normalize(pooled, dim=-1))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.logits(batch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        label = batch["label"] if self.ccmp and self.method.train_weights == "label" else None
        return F.cross_entropy(self.logits(batch, label), batch["label"])

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        return self.logits(batch)  # never a label

    def param_groups(self) -> list[ParamGroup]:
        lr = self.run.train.lr
        prompts = [self.shared, *([self.class_prompts] if self.ccmp else [])]
        head = [self.head.weight, self.head.bias]
        if self.method.head_lr is None:
            return [ParamGroup(prompts + head, lr)]
        return [ParamGroup(prompts, lr), ParamGroup(head, self.method.head_lr)]


class PEPFedPTServer(FedAvgServer):
    """FedAvg of the model (class prompts optionally by usage) and the class prototypes."""

    method: "VPTHead"

    def aggregate(self, t: int, uploads: dict[int, Payload], weights: dict[int, int]) -> None:
        if not uploads:
            return
        usage = {cid: up["usage"] for cid, up in uploads.items() if "usage" in up}
        params = {cid: {k: v for k, v in up.items() if k != "usage"} for cid, up in uploads.items()}
        new = weighted_mean(params, weights, self.global_state)
        if usage:  # class_prompt_agg: usage, class by class
            ids = sorted(usage)
            u = torch.stack([usage[i].double() for i in ids])  # K C
            total = u.sum(0)
            stacked = torch.stack([uploads[i]["class_prompts"].double() for i in ids])  # K L C n W
            mixed = torch.einsum("kc,klcnw->lcnw", u, stacked) / total.clamp_min(1e-12).view(1, -1, 1, 1)
            old = self.global_state["class_prompts"].double()
            keep = (total > 0).view(1, -1, 1, 1)
            new["class_prompts"] = torch.where(keep, mixed, old).to(self.global_state["class_prompts"].dtype)
        self.global_state = {**self.global_state, **new}

    def fold_statistics(self, t: int, stats: dict[int, Payload]) -> None:
        """Prototypes: the pooled class means of z over the clients (sum of sums / sum of counts);
        a later refresh (``proto_feature: prompted``) is blended with momentum."""
        if not stats:
            return
        sums = sum(s["sum"] for s in stats.values())
        counts = sum(s["count"] for s in stats.values())
        seen = counts > 0
        mean = sums / counts.clamp_min(1).unsqueeze(1)
        old = self.global_state["prototypes"].double()
        if t > 0:
            beta = self.method.proto_momentum
            mean = beta * old + (1 - beta) * mean
        proto = torch.where(seen.unsqueeze(1), mean, old)
        self.global_state["prototypes"] = proto.to(self.global_state["prototypes"].dtype)


@dataclass
class VPTHead(Method):
    """A shallow VPT prompt + linear head on a frozen ViT image tower (the knobs all three share)."""

    inputs = frozenset({"pixels"})
    keep_optimizer_state = False
    classifier = "linear head"
    local: ClassVar[bool] = False
    """Each client trains alone (every client, every round) and nothing is sent."""
    client_class = VPTHeadClient
    server_class = PEPFedPTServer

    shared_tokens: int = 10
    """n_s: tokens of the shared prompt P_S at the input [R]."""
    shared_depth: int = 1
    """1: P_S at the input only; J > 1: a fresh P_S before each of the first J blocks (VPT-deep,
    SGPT puts its shared prompts in blocks 0-3) [R] P6."""
    prompt_init: Literal["uniform", "normal"] = "uniform"
    """Prompts' initialisation: VPT's U(-a, a), a = sqrt(6 / (3 * 16 * 16 + width)), or
    N(0, 0.02^2) [R]."""
    head_init: Literal["random", "text"] = "random"
    """Linear head's initialisation: ``random`` (nn.Linear's, server-seeded) or ``text``: the
    backbone's text features of ``head_template`` for each class name, so that the untrained head
    is zero-shot CLIP (a fedmoap adaptation, not in the paper) [R] P11."""
    head_template: str = "a photo of a {}."
    """Prompt of ``head_init: text``."""
    head_lr: Optional[float] = None
    """Learning rate of the head (null: train.lr, as the prompts)."""

    def uses_ccmp(self) -> bool:
        return False

    def declared(self) -> Declares:
        """With CCMP, each record's loss reads class prototypes pooled from the clients' records
        (and, with ``prior: client``, the client's label histogram)."""
        d = super().declared()
        if self.uses_ccmp():
            d = replace(d, record_loss="class prototypes pooled from every client's records (CCMP)")
        return d

    def participants(self, sampled: list[int], num_clients: int, t: int) -> list[int]:
        return list(range(num_clients)) if self.local else sampled

    def problems(self) -> list[str]:
        return [
            msg
            for ok, msg in [
                (self.shared_tokens >= 1, "method.shared_tokens must be >= 1"),
                (self.shared_depth >= 1, "method.shared_depth must be >= 1"),
                ("{}" in self.head_template, "method.head_template must contain {} for the class name"),
                (self.head_lr is None or self.head_lr > 0, "method.head_lr must be > 0 or null"),
            ]
            if not ok
        ]

    def backbone_problems(self, backbone: Backbone) -> list[str]:
        return vision_prompt_problems(self.name, backbone, "shared_depth", self.shared_depth)


@dataclass
class FedAvgVPT(VPTHead):
    """FedAvg-VPT: FedAvg of a shallow visual prompt and a linear head on a frozen ViT (SGPT's
    FedVPT baseline; PEP-FedPT with CCMP off)."""

    name = "fedavg_vpt"
    declares = PROMPT_LEARNER


@dataclass
class LocalVPT(VPTHead):
    """Local VPT: a shallow visual prompt and a linear head trained by each client alone, every
    round, nothing sent (PEP-FedPT's CCMP-off classifier without federation)."""

    name = "local_vpt"
    declares = PROMPT_LEARNER
    local = True
    keep_optimizer_state = True
    server_class = Server


@dataclass
class PEPFedPT(VPTHead):
    """PEP-FedPT (Yashwanth et al., 2026; reconstruction): shared prompt + class prompts mixed per
    sample by global prototypes and the client's class prior, a linear head, all FedAvg'd."""

    name = "pepfedpt"
    declares = replace(PROMPT_LEARNER, server_reads="individual")  # its class prompts' usage weights

    ccmp: bool = True
    """The class-contextualised mixed prompt; false leaves P_S + head: exactly ``fedavg_vpt``."""
    class_tokens: int = 4
    """n_c: tokens of each class prompt P_c [R]."""
    ccmp_layer: float = 0.5
    """Where CCMP enters, as a fraction f of the tower's depth L: before the 0-based block
    round(f * L), i.e. block 7 of 12 (1-based) at 0.5; block 1 of the tiny 2-block
    model [R] P7."""
    ccmp_deep: bool = False
    """A separate P_c for every block from l_c on (VPT-deep; C * n_c * (L - l_c) * D
    parameters) instead of one inserted set that propagates [R] P7."""
    tau: float = 0.1
    """Temperature of the prototype similarity [R]."""
    eps: float = 1e-6
    """Floor inside log(pi + eps): absent classes are almost excluded [R] P10."""
    prior: Literal["client", "uniform"] = "client"
    """``client``: the client's training label histogram; ``uniform``: no client context (the
    generalisation / new-client mode, the plain global model) [V]/[R]."""
    prior_smoothing: float = 0.0
    """Laplace alpha added to every class count before normalising (0: the eps floor alone) [R] P10."""
    prior_use: Literal["log", "none"] = "log"
    """``log``: additive log-prior (Bayes posterior; the multiplicative w ∝ pi * softmax(sim) is
    the same with eps = 0); ``none``: prototypes alone (ablation) [R] P3."""
    similarity: Literal["cosine", "dot", "gaussian"] = "cosine"
    """Likelihood: cos(z, mu) / tau, z . mu / tau (unnormalised mean), or -||z - mu||^2 / (2 tau)
    [R] P2."""
    weights: Literal["soft", "topk", "hard"] = "soft"
    """Soft posterior, its top-k renormalised, or one-hot argmax [R] P4."""
    topk: int = 3
    """k of ``weights: topk``."""
    train_weights: Literal["same", "label"] = "same"
    """Training uses the test-time weights (``same``) or the label's one-hot (ablation) [R] P5."""
    proto_feature: Literal["frozen", "prompted"] = "frozen"
    """z(x): the frozen pooled feature (feature cache; prototypes once before round 1), or the
    pooled feature of a no-grad pass with the current P_S (prototypes refreshed after every round
    from its participants, with momentum) [R] P1/P8."""
    proto_momentum: float = 0.5
    """beta of the refresh: mu <- beta mu + (1 - beta) mu_new (SGPT's key momentum) [R] P8."""
    class_prompt_agg: Literal["size", "usage"] = "size"
    """FedAvg weights of the class prompts: training-set size ([V] "standard FedAvg"), or class by
    class the client's soft usage sum_x w_c(x) over its local steps [R] P9."""

    def uses_ccmp(self) -> bool:
        return self.ccmp

    def ccmp_block(self, layers: int) -> int:
        """0-based block before which CCMP enters, in a ``layers``-block tower."""
        return min(layers - 1, max(0, round(self.ccmp_layer * layers)))

    def required_inputs(self) -> frozenset[str]:
        if self.ccmp and self.proto_feature == "frozen":
            return frozenset({"pixels", "features"})
        return frozenset({"pixels"})

    def collects_statistics(self, t: int) -> bool:
        return self.ccmp and (t == 0 or self.proto_feature == "prompted")

    def problems(self) -> list[str]:
        return super().problems() + [
            msg
            for ok, msg in [
                (self.class_tokens >= 1, "method.class_tokens must be >= 1"),
                (0 <= self.ccmp_layer < 1, "method.ccmp_layer must be in [0, 1)"),
                (self.tau > 0, "method.tau must be > 0"),
                (self.eps >= 0, "method.eps must be >= 0"),
                (self.prior_smoothing >= 0, "method.prior_smoothing must be >= 0"),
                (self.topk >= 1, "method.topk must be >= 1"),
                (0 <= self.proto_momentum < 1, "method.proto_momentum must be in [0, 1)"),
            ]
            if not ok
        ]
