"""FedMGP (Bo, Sun, Wang, Zhang, Li, NeurIPS 2025), from its code: G groups of paired text and
visual prompts per client, a diversity term between groups, and a similarity-driven choice of the
s groups each client shares.

Client (reference: weihao-bo/FedMGP ``trainers/fedmgp.py``, ``federated_core/trainers/
fedmgp_learner.py``; only the abstract was readable): group g has a text context P_g (n_t x W,
from "a photo of a" cut to n_t tokens plus N(0, 0.01^2) noise) and a shallow visual prompt V_g
(n_v x Wv, N(0, 0.02^2), appended to [CLS] + patches before the pre-norm). With f_g the normalised
image feature under V_g and T_g the normalised class features of P_g, ``l_g = s f_g T_g^T`` (paired
by index); the loss is ``mean_g CE(l_g, y) + lambda L_div`` and predictions average the l_g.

Diversity (``diversity``): the reference code's ``l1`` term ends up *minimising*
``lambda/2 (mean |T_i - T_j| + mean |f_i - f_j|)`` (it takes the absolute value of a negative
distance), pulling the groups together, against the paper's stated aim that groups specialise;
``code`` reproduces it. ``push`` (default) is a hinge on the same per-coordinate L1 distance,
``lambda/2 [mean_{c,i<j} relu(m - |T_i,c - T_j,c|_1 / D) + mean_{b,i<j} relu(m - |f_i,b - f_j,b|_1 / D)]``
with m = 2 / sqrt(pi D), the expected per-coordinate distance of two random unit vectors.

Sharing: after local training a client picks s text and s visual groups (independently): in its
first participation uniformly, later with probabilities ``softmax(sim / temperature)``, sim_g the
largest cosine between its (flattened) group g and the s global prompts it downloaded; drawn
without replacement from (seed, round, client). The r-th drawn group is its rank-r upload; the
server averages each rank over the participants (unweighted by default). At its next download (or
evaluation) the client overwrites the groups it uploaded with the latest globals of their ranks;
the other G - s groups stay personal. A never-trained client is evaluated with its G groups filled
by the s globals in turn (group g <- global g mod s). Not reproduced: the visual prompts' seed from
the clock.

Keys name the group: an upload is ``{kind}.{g}`` for the drawn groups, in rank order, and a client
that has uploaded downloads the globals under the keys of the groups they overwrite (a client that
has not, and a never-trained one, gets them by rank, ``{kind}_{r}``); :meth:`FedMGPClient.global_init`
holds every group's public initial value under its key. So ``dp.mode client_upload`` clips each
uploaded group's change from what the server knows of that group: the global it last wrote into
it, else its initial value. The server thereby learns which groups a client shares; that choice is
not noised (in round 1 it is a uniform draw from the seed, later a softmax over the client's
similarities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import HeldOut, ParamGroup, Payload, RunContext, vision_prompt_problems
from fedmoap.methods.declarations import PROMPT_LEARNER, Declares
from fedmoap.methods.fedtpg import UniformMeanServer
from fedmoap.methods.prompts import PromptClient, PromptMethod
from fedmoap.seeding import torch_generator

__all__ = ["KINDS", "FedMGPClient", "FedMGPServer", "FedMGP"]

KINDS = ("text", "vision")


class FedMGPClient(PromptClient):
    """Text groups ``text`` (G, n_t, W) and visual groups ``vision`` (G, n_v, Wv)."""

    method: "FedMGP"

    def __init__(self, method: "FedMGP", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        del self.ctx
        self.text = nn.Parameter(torch.zeros(method.groups, method.n_ctx, backbone.ctx_width))
        self.vision = nn.Parameter(torch.zeros(method.groups, method.vision_tokens, backbone.vision_width))
        self.sent: dict[str, Tensor] | None = None
        """Group indices of the client's last upload, by kind, in rank order (None: never uploaded)."""
        self._due = False  # a selection is owed for the training since the last download
        self._globals: Payload = {}

    def initial_groups(self) -> dict[str, Tensor]:
        """The same for every client: text from ``init_words`` plus noise, vision N(0, 0.02^2)."""
        m, bb = self.method, self.backbone
        gen = torch_generator(self.run.seed, "fedmgp/groups")
        base = torch.randn(m.n_ctx, bb.ctx_width, generator=gen) * 0.02
        if m.init_words:
            words = bb.embed_tokens(m.init_words).detach().cpu()[: m.n_ctx]
            base[: len(words)] = words
        text = base + torch.randn(m.groups, m.n_ctx, bb.ctx_width, generator=gen) * 0.01
        vision = torch.randn(m.groups, m.vision_tokens, bb.vision_width, generator=gen) * 0.02
        return {"text": text, "vision": vision}

    def global_init(self) -> Payload:
        """Every group's public initial value under its upload key (``text.0``, ...): the reference
        of an upload under ``dp.mode client_upload``; the server sends no global before the
        first aggregation."""
        return {f"{kind}.{g}": v for kind, value in self.initial_groups().items() for g, v in enumerate(value)}

    def reset(self, cid: int) -> None:
        with torch.no_grad():
            for kind, value in self.initial_groups().items():
                getattr(self, kind).copy_(value)
        self.sent, self._due, self._globals = None, False, {}

    def extra_state(self) -> dict[str, Tensor]:
        self._settle()
        return {} if self.sent is None else {f"sent_{k}": v for k, v in self.sent.items()}

    def load_extra_state(self, extra: dict[str, Tensor]) -> None:
        self.sent = {k: extra[f"sent_{k}"] for k in KINDS} if extra else None
        self._due, self._globals = False, {}

    # ----- communication ----------------------------------------------------------------------
    # What is shared changes from round to round (s of the G groups, chosen after training), so
    # FedMGP writes its own download and upload instead of declaring shared parameters.
    def _write(self, payload: Payload) -> None:
        """The latest globals into the groups the client last uploaded: the payload's keys
        ``{kind}.{g}`` (rank keys are not written)."""
        with torch.no_grad():
            for key, value in payload.items():
                if "." in key:
                    kind, g = key.split(".")
                    getattr(self, kind)[int(g)] = value.to(self.text.device)

    def receive(self, payload: Payload) -> None:
        self._write(payload)
        self._due, self._globals = True, dict(payload)

    def prepare_eval(self, payload: Payload) -> None:
        self._write(payload)

    def prepare_unseen(self, held: HeldOut) -> None:
        payload = held.download(None)
        if not payload:
            return
        s = min(self.method.topk, self.method.groups)
        with torch.no_grad():
            for kind in KINDS:
                for g in range(self.method.groups):
                    getattr(self, kind)[g] = payload[f"{kind}_{g % s}"].to(self.text.device)

    def select(self, kind: str) -> Tensor:
        """The indices of the ``kind`` groups to upload, in rank order (see the module doc)."""
        m = self.method
        groups = getattr(self, kind).detach().double().flatten(1)
        s = min(m.topk, m.groups)
        if s == m.groups:
            return torch.arange(s)
        gen = torch_generator(self.run.seed, "fedmgp/select", kind, self.planned_round or 0, self.client_id)
        shared = [v for k, v in sorted(self._globals.items()) if k.startswith((f"{kind}_", f"{kind}."))]
        if not shared:
            return torch.multinomial(torch.ones(m.groups, dtype=torch.float64), s, generator=gen)
        ref = torch.stack([v.double().flatten().to(groups.device) for v in shared])
        sim = (F.normalize(groups, dim=-1) @ F.normalize(ref, dim=-1).t()).max(dim=1).values.cpu()
        if m.temperature == 0:
            return sim.topk(s).indices
        return torch.multinomial(torch.softmax(sim / m.temperature, 0), s, generator=gen)

    def _settle(self) -> None:
        """Draw the selection owed for the training since the last download (once)."""
        if self._due:
            self.sent, self._due = {k: self.select(k) for k in KINDS}, False

    def upload(self) -> Payload:
        self._due = self._due or self.sent is None
        self._settle()
        return {  # in rank order: the server reads the ranks from it
            f"{kind}.{g}": getattr(self, kind)[g].detach().cpu().clone()
            for kind in KINDS
            for g in self.sent[kind].tolist()
        }

    # ----- model ------------------------------------------------------------------------------
    def text_features(self, ctx: Tensor | None = None) -> Tensor:
        """(G, C, D) normalised class features of every text group."""
        return F.normalize(self.backbone.encode_prompts(self.slots, self.text if ctx is None else ctx), dim=-1)

    def image_features(self, pixels: Tensor) -> Tensor:
        """(G, B, D) normalised image features under every visual group (one pass of G x B)."""
        g, b = self.vision.shape[0], pixels.shape[0]
        tokens = self.vision.unsqueeze(1).expand(-1, b, -1, -1).reshape(g * b, *self.vision.shape[1:])
        feats = self.backbone.encode_image_prompted(pixels.repeat(g, 1, 1, 1), [{0: tokens}])
        return F.normalize(feats, dim=-1).view(g, b, -1)

    def group_logits(self, image: Tensor, text: Tensor) -> Tensor:
        """(G, B, C): group g's image features against group g's class features."""
        return self.backbone.logit_scale * image @ text.transpose(1, 2)

    def diversity_loss(self, text: Tensor, image: Tensor) -> Tensor:
        """L_div of (G, C, D) text and (G, B, D) image features (``diversity``: push or code)."""
        g = text.shape[0]
        if g < 2:
            return text.new_zeros(())
        i, j = torch.triu_indices(g, g, 1, device=text.device)
        dist = [(f[i] - f[j]).abs().mean(-1) for f in (text, image)]  # (pairs, rows) each
        if self.method.diversity == "code":
            return 0.5 * (dist[0].mean() + dist[1].mean())
        margin = 2 / math.sqrt(math.pi * text.shape[-1])
        return 0.5 * (F.relu(margin - dist[0]).mean() + F.relu(margin - dist[1]).mean())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        text, image = self.text_features(), self.image_features(batch["pixels"])
        logits = self.group_logits(image, text)
        ce = torch.stack([F.cross_entropy(lg, batch["label"]) for lg in logits]).mean()
        if self.method.diversity_weight == 0:
            return ce
        return ce + self.method.diversity_weight * self.diversity_loss(text, image)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.group_logits(self.image_features(batch["pixels"]), self.text_features()).mean(0)

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        return self.group_logits(self.image_features(batch["pixels"]), self._eval_cache).mean(0)

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup([self.text, self.vision], self.run.train.lr)]


class FedMGPServer(UniformMeanServer):
    """The globals by rank, ``{kind}_{r}`` (none before the first aggregation), and which groups
    each client last uploaded, from its keys: its download names them."""

    def __init__(self, method: "FedMGP", init: Payload, run: RunContext) -> None:
        super().__init__(method, init, run)
        self.global_state: Payload = {}  # init is the groups' initial values, never sent
        self.sent: dict[int, list[str]] = {}
        """Client -> the keys of its last upload, in rank order per kind."""

    def by_rank(self, keys: list[str]) -> dict[str, str]:
        """Group key -> rank key, the r-th key of a kind being rank r."""
        ranks = {kind: 0 for kind in KINDS}
        out = {}
        for key in keys:
            kind = key.split(".")[0]
            out[key], ranks[kind] = f"{kind}_{ranks[kind]}", ranks[kind] + 1
        return out

    def payload(self, cid: int, t: int) -> Payload:
        if cid not in self.sent or not self.global_state:
            return dict(self.global_state)
        return {key: self.global_state[rank] for key, rank in self.by_rank(self.sent[cid]).items()}

    def eval_payload(self, cid: int) -> Payload:
        return self.payload(cid, 0)

    def unseen_payload(self, cid: int, upload: Payload | None = None) -> Payload:
        return dict(self.global_state)

    def aggregate(self, t: int, uploads: dict[int, Payload], weights: dict[int, int]) -> None:
        ranked = {}
        for cid, up in uploads.items():
            self.sent[cid] = list(up)
            ranked[cid] = {rank: up[key] for key, rank in self.by_rank(list(up)).items()}
        super().aggregate(t, ranked, weights)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "sent": {cid: list(keys) for cid, keys in self.sent.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.sent = {int(cid): list(keys) for cid, keys in state.get("sent", {}).items()}


@dataclass
class FedMGP(PromptMethod):
    """FedMGP (Bo et al., NeurIPS 2025), from its code but for the diversity term's sign (the
    default ``diversity: push`` spreads the groups, the code's term pulls them together): G paired
    text + visual prompt groups per client; each round a client shares s of them, chosen by
    similarity to the last global prompts; needs a ViT."""

    name = "fedmgp"
    inputs = frozenset({"pixels"})
    client_class = FedMGPClient
    server_class = FedMGPServer
    declares = replace(PROMPT_LEARNER, server_reads="individual")

    n_ctx: int = 2
    """n_t, text context tokens per group (the reference's 2)."""
    init_words: Optional[str] = "a photo of a"
    """Every text group starts as the first ``n_ctx`` tokens of these words plus N(0, 0.01^2)
    noise (null: N(0, 0.02^2) for all)."""
    groups: int = 5
    """G, text and visual prompt groups per client."""
    vision_tokens: int = 2
    """n_v, visual prompt tokens per group (shallow: at the input)."""
    topk: int = 2
    """s, groups of each kind uploaded per round (all of them when s >= G)."""
    temperature: float = 1.0
    """tau of the selection's softmax over similarities; 0 takes the s most similar."""
    diversity: Literal["push", "code"] = "push"
    """``push`` (default, so not the reference code's sign): a hinge pushing groups apart (the
    paper's stated aim); ``code``: the reference code's term, which pulls them together."""
    diversity_weight: float = 1.0
    """lambda of the diversity term."""
    weighting: Literal["uniform", "size"] = "uniform"
    """Server mean of each rank: ``uniform`` (the reference) or weighted by training-set size."""

    def declared(self) -> Declares:
        """With s < G the upload's keys name the groups a client shares, chosen after round 1 by
        its trained groups' similarity to the globals."""
        d = super().declared()
        if self.topk < self.groups:
            d = replace(d, reveals="which of its prompt groups it shares (chosen by their similarity to the globals)")
        return d

    def problems(self) -> list[str]:
        out = super().problems()
        out += [
            msg
            for ok, msg in [
                (not self.ctx_init, "method.ctx_init: FedMGP initialises from method.init_words (cut to n_ctx)"),
                (self.groups >= 1, "method.groups must be >= 1"),
                (self.vision_tokens >= 1, "method.vision_tokens must be >= 1"),
                (self.topk >= 1, "method.topk must be >= 1"),
                (self.temperature >= 0, "method.temperature must be >= 0"),
                (self.diversity_weight >= 0, "method.diversity_weight must be >= 0"),
            ]
            if not ok
        ]
        return out

    def backbone_problems(self, backbone: Backbone) -> list[str]:
        return vision_prompt_problems(self.name, backbone, "vision_tokens", 1)
