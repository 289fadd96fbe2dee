"""packaged-vit vs packaged-towers: zero-shot on Fashion-MNIST test ("a photo of a {}.", inverted
images) and first-build times, in a fresh temporary cache directory.

    python scripts/diagnostics/packaged_vit_zero_shot.py [--test 2000] [--size 112] [--threads N]
    python scripts/diagnostics/packaged_vit_zero_shot.py --grid   # the bridge strength, label-free

``--grid``: 5-fold held-out cosine between bridged and true EfficientNet features on the default
bridge images for several ridge strengths (the label-free criterion BRIDGE_STRENGTH was chosen by),
with the zero-shot accuracy each gives (reported only, not used to choose).
"""
import argparse, tempfile, time
import torch, torch.nn.functional as F
from fedmoap.backbones.dinov2_onnx import load_converted
from fedmoap.backbones.packaged import PackagedTowersBackbone, fit_ridge
from fedmoap.backbones.packaged_vit import BRIDGE_TARGET_SIZE, PackagedViTBackbone, bridge_images_default
from fedmoap.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist

ap = argparse.ArgumentParser()
ap.add_argument("--test", type=int, default=2000)
ap.add_argument("--size", type=int, default=112)
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--grid", action="store_true")
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
print("threads", torch.get_num_threads())
cache = tempfile.mkdtemp(prefix="packaged_vit_")
clock = time.perf_counter
t = clock(); towers = PackagedTowersBackbone.build(cache, BRIDGE_TARGET_SIZE); print(f"packaged-towers cold build {clock() - t:.1f} s")
t = clock(); load_converted(cache); print(f"ONNX -> timm conversion {clock() - t:.1f} s")
t = clock(); vit = PackagedViTBackbone.build(cache, args.size, bridge_images=8 if args.grid else None)
print(f"packaged-vit build (bridge fitted on {8 if args.grid else 'the default'} images) {clock() - t:.1f} s")
test = load_fashion_mnist()["test"].select(range(0, 10_000, 10_000 // args.test))
labels = torch.tensor(test["label"])
with torch.no_grad():
    text = F.normalize(vit.encode_prompts(vit.prepare_prompts([f"a photo of a {n}." for n in CLASS_NAMES], 0)), dim=-1)


@torch.no_grad()
def encode(fn, tf, images):
    return torch.cat([fn(torch.stack([tf(i) for i in images[s:s + 32]])) for s in range(0, len(images), 32)])


def zero_shot(feats):
    pred = (F.normalize(feats.float(), dim=-1) @ text.T).argmax(1)
    return (pred == labels).double().mean().item(), torch.bincount(pred, minlength=10).tolist()


images = test["image"]
t = clock(); dino = encode(vit.dino_features, vit.image_transform(False), images)
print(f"packaged-vit: {len(images)} test images encoded in {clock() - t:.1f} s")
if not args.grid:
    t = clock(); f_towers = encode(towers.encode_image, towers.image_transform(False), images)
    print(f"packaged-towers: {len(images)} test images encoded in {clock() - t:.1f} s")
    print("packaged-towers zero-shot, predictions per class:", *zero_shot(f_towers))
    print("packaged-vit    zero-shot, predictions per class:", *zero_shot(vit.bridge(dino)))
else:
    t = clock(); x, y = vit.bridge_pairs(bridge_images_default(), towers)
    print(f"bridge pairs of the default images: {clock() - t:.1f} s")
    folds = torch.arange(len(x)) % 5
    for lam in (1.0, 10.0, 100.0, 300.0, 1000.0, 3000.0):
        cos = torch.cat([F.cosine_similarity(x[folds == k].double() @ fit_ridge(x[folds != k], y[folds != k], lam),
                                             y[folds == k].double()) for k in range(5)]).mean().item()
        print(f"strength {lam:g}: held-out cosine {cos:.4f}, zero-shot {zero_shot(dino.double() @ fit_ridge(x, y, lam))[0]:.4f}")
