"""packaged-vit vs packaged-towers: zero-shot on Fashion-MNIST test ("a photo of a {}.", inverted
images) and first-build times, in a fresh temporary cache directory.

    python scripts/diagnostics/packaged_vit_zero_shot.py [--test 2000] [--size 112] [--threads N]
    python scripts/diagnostics/packaged_vit_zero_shot.py --grid   # the bridge strength, label-free

``--grid``: for several ridge strengths, 5-fold held-out (600 consecutive bridge images each)
cosine between bridged and true EfficientNet features, and squared error of the token bridge per
token: the label-free criteria BRIDGE_STRENGTH and TOKEN_BRIDGE_STRENGTH were chosen by. The
zero-shot accuracy each gives is reported only, not used to choose.
"""

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from fedmoap.backbones.dinov2_onnx import load_converted
from fedmoap.backbones.packaged import PackagedTowersBackbone
from fedmoap.backbones.packaged_vit import BRIDGE_TARGET_SIZE, BridgeData, PackagedViTBackbone, bridge_images_default
from fedmoap.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--bridge", type=int, default=3000, help="--grid: bridge images (5 folds)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("threads", torch.get_num_threads())
    cache = tempfile.mkdtemp(prefix="packaged_vit_")
    clock = time.perf_counter
    t = clock()
    towers = PackagedTowersBackbone.build(cache, BRIDGE_TARGET_SIZE)
    print(f"packaged-towers cold build {clock() - t:.1f} s")
    t = clock()
    load_converted(cache)
    print(f"ONNX -> timm conversion {clock() - t:.1f} s")
    t = clock()
    vit = PackagedViTBackbone.build(cache, args.size, bridge_images=8 if args.grid else None)
    print(f"packaged-vit build (bridge fitted on {8 if args.grid else 'the default'} images) {clock() - t:.1f} s")
    test = load_fashion_mnist()["test"].select(range(0, 10_000, 10_000 // args.test))
    labels = torch.tensor(test["label"])
    with torch.no_grad():
        text = F.normalize(
            vit.encode_prompts(vit.prepare_prompts([f"a photo of a {n}." for n in CLASS_NAMES], 0)), dim=-1
        )

    @torch.no_grad()
    def encode(fn, tf, images):
        return torch.cat([fn(torch.stack([tf(i) for i in images[s : s + 32]])) for s in range(0, len(images), 32)])

    def zero_shot(feats):
        pred = (F.normalize(feats.float(), dim=-1) @ text.T).argmax(1)
        return (pred == labels).double().mean().item(), torch.bincount(pred, minlength=10).tolist()

    images = test["image"]
    tf = vit.image_transform(False)
    t = clock()
    with torch.no_grad():
        h = [
            vit.vit.forward_features(torch.stack([tf(i) for i in images[s : s + 32]]))
            for s in range(0, len(images), 32)
        ]
    dino = torch.cat([torch.cat([b[:, 0], b[:, 1:].mean(1)], -1) for b in h])
    tokens = torch.cat([b[:, 1:] for b in h])
    del h
    print(f"packaged-vit: {len(images)} test images encoded in {clock() - t:.1f} s")

    def token_zero_shot(w):  # each patch token through the token bridge, its logits averaged
        logits = torch.cat([(F.normalize(t.double() @ w, dim=-1) @ text.double().T).mean(1) for t in tokens.split(100)])
        return (logits.argmax(1) == labels).double().mean().item()

    if not args.grid:
        t = clock()
        f_towers = encode(towers.encode_image, towers.image_transform(False), images)
        print(f"packaged-towers: {len(images)} test images encoded in {clock() - t:.1f} s")
        print("packaged-towers zero-shot, predictions per class:", *zero_shot(f_towers))
        print("packaged-vit    zero-shot, predictions per class:", *zero_shot(vit.bridge(dino)))
        print("packaged-vit    zero-shot of the mean token logits:", token_zero_shot(vit.token_bridge.weight.T))
    else:  # 5 folds of consecutive bridge images
        bridge, n = bridge_images_default(args.bridge), args.bridge // 5
        t = clock()
        folds = [vit.bridge_data(bridge[k * n : (k + 1) * n], towers) for k in range(5)]
        print(f"bridge data of the default images: {clock() - t:.1f} s")

        def merge(parts):
            return BridgeData(
                torch.cat([d.pooled for d in parts]),
                torch.cat([d.target for d in parts]),
                sum(d.token_gram for d in parts),
                parts[0].tokens,
            )

        def held_out(lam, tok_lam):
            cos, err = [], []
            for k, d in enumerate(folds):
                w, wt = merge(folds[:k] + folds[k + 1 :]).fit(lam, tok_lam)
                cos.append(F.cosine_similarity(d.pooled @ w.T, d.target))
                wt, p, y = wt.T.double(), d.tokens, d.target.double()
                sums = d.pooled[:, 384:].double() * p
                err.append(
                    (torch.trace(wt.T @ d.token_gram @ wt) - 2 * torch.trace(wt.T @ sums.T @ y) + p * y.square().sum())
                    / (p * len(y))
                )
            return torch.cat(cos).mean().item(), torch.stack(err).mean().item()

        full = merge(folds)
        for lam in (1.0, 10.0, 100.0, 300.0, 1000.0, 3000.0):
            print(
                f"strength {lam:g}: held-out cosine {held_out(lam, 1.0)[0]:.4f}, "
                f"zero-shot {zero_shot(dino @ full.fit(lam, 1.0)[0].T)[0]:.4f}"
            )
        for lam in (10.0, 100.0, 1000.0, 10000.0, 100000.0):
            print(
                f"token strength {lam:g}: held-out squared error per token {held_out(1.0, lam)[1]:.4f}, "
                f"mean-token zero-shot {token_zero_shot(full.fit(1.0, lam)[1].T.double()):.4f}"
            )


if __name__ == "__main__":
    main()
