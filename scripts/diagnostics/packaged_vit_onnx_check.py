"""One-off faithfulness check of the converted DINOv2 weights against the ONNX graph itself, at the
graph's fixed 224 px input: final-norm tokens (timm vs ONNX Runtime) and the position table
(our resampling vs the graph's own). Needs onnxruntime, which fedmoap does not depend on:

    pip install --target /tmp/ort --no-deps onnxruntime
    PYTHONPATH=/tmp/ort python scripts/diagnostics/packaged_vit_onnx_check.py
"""

import tempfile

import onnx
import torch
import torchvision.transforms as T
from PIL import Image
from sklearn.datasets import load_sample_images
from timm.layers import resample_abs_pos_embed

from fedmoap.backbones.dinov2_onnx import load_converted, onnx_path
from fedmoap.backbones.packaged_vit import _make_vit
from fedmoap.data.fashion_mnist import load_fashion_mnist


def expose_outputs(m: onnx.ModelProto) -> dict[str, str]:
    """Make the graph's position table and final-norm tokens outputs of ``m``; their names."""
    outputs = {
        "pos": "/backbone/embeddings/Concat_6_output_0",
        "tokens": [n for n in m.graph.node if n.name.startswith("/backbone/layernorm/")][-1].output[0],
    }
    for name in outputs.values():
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return outputs


def main() -> None:
    import onnxruntime as ort  # not a fedmoap dependency: see the module's docstring

    state, _ = load_converted(tempfile.mkdtemp())
    vit = _make_vit(state, 224)
    m = onnx.load(str(onnx_path()))
    outputs = expose_outputs(m)
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    tf = T.Compose(
        [T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    images = [Image.fromarray(a) for a in load_sample_images().images]  # china, flower
    images += [i.convert("RGB") for i in load_fashion_mnist()["test"].select(range(2))["image"]]
    x = torch.stack([tf(i) for i in images])
    got = dict(zip(outputs, map(torch.from_numpy, session.run(list(outputs.values()), {"input_image": x.numpy()}))))
    with torch.no_grad():
        ours = vit.forward_features(x)
    d = (ours - got["tokens"]).abs()
    print(
        f"final-norm tokens, {len(images)} images: max |diff| {d.max():.2e}, mean {d.mean():.2e}, "
        f"max |value| {ours.abs().max():.1f}"
    )
    print(f"position table at 16x16 vs the graph's: max |diff| {(vit.pos_embed - got['pos']).abs().max():.2e}")
    timm_pos = resample_abs_pos_embed(state["pos_embed"], new_size=(16, 16), old_size=(37, 37), num_prefix_tokens=1)
    gap = (timm_pos - got["pos"]).abs().max()
    print(f"timm's antialiased resample_abs_pos_embed vs the graph's: max |diff| {gap:.2e}")


if __name__ == "__main__":
    main()
