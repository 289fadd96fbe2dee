"""PromptSRC (Khattak et al., ICCV 2023), federated by FedAvg as FLiP does: IVLP prompts that
regularise themselves towards the frozen model, and Gaussian prompt aggregation.

Client (reference: muzairkhattak/PromptSRC ``trainers/promptsrc.py``): IVLP's independent deep
text and vision prompts (``fedvpt`` with ``text_depth``) trained on::

    L = CE(s f T^T, y) + text_weight * mean|T - t| + image_weight * mean|f - f0|
        + logit_weight * sum_b KL(p_zs,b || p_b) / (B C)

T: the prompted class text features; t: per class the mean of the frozen text tower's features of
CLIP's 60 ImageNet templates, normalised (textual diversity); f and f0: the prompted and the
frozen image feature of the same augmented image (all L2-normalised); p = softmax(s f T^T),
p_zs = softmax(s f0 t^T). ``vision_depth: 0`` is FLiP's text-only port: no vision prompts, the
cached image features (f = f0, so the image term is 0).

Server: FedAvg of every prompt (size-weighted; nothing personal), and Gaussian prompt aggregation
over rounds as evaluation state only: everyone is evaluated with sum_t g_t theta_t / sum_t g_t
over the aggregated rounds, g_t the N(peak, gpa_std^2) density at t, the peak ``gpa_mean`` or
0.75 x fed.rounds (the latest theta_t while the sum of g_t is below 1e-6), and trains on from
theta_t. The paper runs GPA
over the epochs of one training; FLiP's port loads its running partial sum as the global model
every round (the model shrinks towards 0 until round ~gpa_mean and clients restart from it): not
reproduced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import FedAvgServer, Payload, RunContext, text_depth_problems
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.fedvpt import FedVPT, FedVPTClient
from fedmoap.methods.prompts import PromptMethod

__all__ = ["IMAGENET_TEMPLATES", "PromptSRCClient", "gpa_weight", "PromptSRCServer", "PromptSRC"]

IMAGENET_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
)
"""CLIP's 60 ImageNet prompt templates (openai/CLIP's prompt-engineering notebook), the teacher's."""


class PromptSRCClient(FedVPTClient):
    """IVLP's prompts trained with the three self-regulating terms; evaluated with the server's
    Gaussian aggregate."""

    method: "PromptSRC"
    _teacher: Optional[Tensor] = None

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self._teacher = None

    @property
    def teacher(self) -> Tensor:
        """(C, D) the frozen text features of every template, averaged per class, normalised
        (computed once per label space)."""
        if self._teacher is None:
            with torch.no_grad():
                bb, templates = self.backbone, self.method.teacher_templates or IMAGENET_TEMPLATES
                total = 0
                for template in templates:
                    slots = bb.prepare_prompts([template.format(c) for c in self.classnames], 0)
                    total = total + bb.encode_prompts(slots.to(self.ctx.device)).float()
                self._teacher = F.normalize(total / len(templates), dim=-1)
        return self._teacher

    def image_pair(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(f, f0): the prompted and the frozen normalised image features of the batch."""
        if not self.method.vision_depth:
            return batch["features"], batch["features"]
        f = self.image_features(batch["pixels"])
        with torch.no_grad():
            f0 = F.normalize(self.backbone.encode_image_prompted(batch["pixels"]), dim=-1)
        return f, f0

    def logits(self, batch: dict[str, Tensor], text: Tensor) -> Tensor:
        if self.method.vision_depth:
            return super().logits(batch, text)
        return self.backbone.logit_scale * batch["features"] @ text.t()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        m, s = self.method, self.backbone.logit_scale
        text = self.text_features()
        f, f0 = self.image_pair(batch)
        logits = s * f @ text.t()
        loss = F.cross_entropy(logits, batch["label"])
        teacher = self.teacher.to(text.dtype)
        if m.text_weight:
            loss = loss + m.text_weight * (text - teacher).abs().mean()
        if m.image_weight and m.vision_depth:
            loss = loss + m.image_weight * (f - f0).abs().mean()
        if m.logit_weight:
            zero_shot = F.log_softmax(s * f0.detach() @ teacher.t(), dim=-1)
            kl = F.kl_div(F.log_softmax(logits, dim=-1), zero_shot, reduction="sum", log_target=True)
            loss = loss + m.logit_weight * kl / logits.numel()
        return loss


def gpa_weight(t: float, mean: float, std: float) -> float:
    """The Gaussian density N(mean, std^2) at round t (PromptSRC's epoch weight)."""
    return math.exp(-0.5 * ((t - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


class PromptSRCServer(FedAvgServer):
    """FedAvg, plus the Gaussian aggregate of the rounds' global models for evaluation."""

    method: "PromptSRC"

    def __init__(self, method: "PromptSRC", init: Payload, run: RunContext) -> None:
        super().__init__(method, init, run)
        self.models: dict[int, Payload] = {}
        """Round t -> the global model after its aggregation (kept while ``gpa`` is on): the
        weights depend on where the peak is, which moves with ``fed.rounds`` if it is relative."""

    def aggregate(self, t: int, uploads: dict[int, Payload], weights: dict[int, int]) -> None:
        super().aggregate(t, uploads, weights)
        if self.method.gpa:
            self.models[t] = dict(self.global_state)

    def weights(self) -> dict[int, float]:
        """Round -> g_t, the Gaussian density at round t of N(peak, ``gpa_std``²), over the
        aggregated rounds."""
        peak = self.method.peak(self.run.rounds)
        return {t: gpa_weight(t, peak, self.method.gpa_std) for t in sorted(self.models)}

    def eval_payload(self, cid: int) -> Payload:
        g = self.weights() if self.method.gpa else {}
        total = sum(g.values())
        if total < 1e-6:  # all aggregated rounds far before the peak: the latest model
            return dict(self.global_state)
        mix: dict[str, Tensor] = {}
        for t, w in g.items():
            mix = {k: mix.get(k, 0) + w * v.double() for k, v in self.models[t].items()}
        return {k: (v / total).to(self.global_state[k].dtype) for k, v in mix.items()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "gpa_models": dict(self.models)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.models = {int(t): dict(m) for t, m in state["gpa_models"].items()}


@dataclass
class PromptSRC(FedVPT):
    """PromptSRC (Khattak et al., ICCV 2023), federated by FedAvg (FLiP): IVLP prompts with
    self-regulating constraints towards the frozen model and Gaussian prompt aggregation over
    rounds; a ViT for vision prompts, or ``vision_depth: 0`` (text only, FLiP's port) on any tower."""

    name = "promptsrc"
    client_class = PromptSRCClient
    server_class = PromptSRCServer
    declares = replace(PROMPT_LEARNER, round_knobs=("gpa_mean",))
    keep_optimizer_state = False  # FLiP: a fresh optimizer every round

    n_ctx: int = 4
    """Text context vectors (PromptSRC's 4)."""
    ctx_init: Optional[str] = "a photo of a"
    """PromptSRC initialises the text context from "a photo of a" (FLiP: random, null)."""
    vision_tokens: int = 4
    """Vision prompt tokens per layer (PromptSRC's 4)."""
    vision_depth: int = 9
    """Image-tower blocks with vision prompts (PromptSRC's 9); 0: none (FLiP's text-only port,
    on cached image features)."""
    text_depth: int = 9
    """Text blocks with prompts (PromptSRC's 9; 1: the context at the input only)."""
    text_weight: float = 25.0
    """Weight of mean|T - t| (the paper's 25)."""
    image_weight: float = 10.0
    """Weight of mean|f - f0| (the paper's 10)."""
    logit_weight: float = 1.0
    """Weight of the KL term to the frozen model's logits (the paper's 1)."""
    gpa: bool = True
    """Evaluate with the Gaussian aggregate of the rounds' global models; false: the last one."""
    gpa_mean: Optional[float] = None
    """Round of the Gaussian's peak; null: 0.75 x fed.rounds, where the paper puts it (epoch 15
    of 20; FLiP: round 15 of 50). A number must be a round of the run."""
    gpa_std: float = 1.0
    """Its standard deviation in rounds (the paper's 1)."""
    teacher_templates: Optional[list[str]] = field(default=None)
    """Templates averaged into the frozen class features t; null: CLIP's 60 ImageNet templates."""

    def peak(self, rounds: int | None) -> float:
        """The round of the Gaussian's peak in a run of ``rounds`` rounds."""
        if self.gpa_mean is not None:
            return self.gpa_mean
        if rounds is None:
            raise ValueError("method.gpa_mean null places the peak at 0.75 x fed.rounds: the run's rounds are unknown")
        return 0.75 * rounds

    def required_inputs(self) -> frozenset[str]:
        return frozenset({"pixels" if self.vision_depth else "features"})

    def problems(self) -> list[str]:
        out = PromptMethod.problems(self)
        out += [
            msg
            for ok, msg in [
                (self.vision_depth >= 0, "method.vision_depth must be >= 0"),
                (self.vision_tokens >= 1, "method.vision_tokens must be >= 1"),
                (self.text_depth >= 1, "method.text_depth must be >= 1"),
                (
                    min(self.text_weight, self.image_weight, self.logit_weight) >= 0,
                    "method.text_weight, image_weight and logit_weight must be >= 0",
                ),
                (self.gpa_std > 0, "method.gpa_std must be > 0"),
                (
                    self.teacher_templates is None
                    or (self.teacher_templates and all("{}" in t for t in self.teacher_templates)),
                    "method.teacher_templates must be null or a non-empty list of templates with {} for the class name",
                ),
            ]
            if not ok
        ]
        return out

    def backbone_problems(self, backbone: Backbone) -> list[str]:
        if self.vision_depth:
            return super().backbone_problems(backbone)
        return text_depth_problems(backbone, self.text_depth)
