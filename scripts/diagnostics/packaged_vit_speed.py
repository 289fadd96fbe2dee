"""packaged-vit on this machine: one SGD step of VPT-deep (10 tokens x 12 blocks) and VPT-shallow
(8 tokens), forward + backward through the frozen ViT, batch 32; and inference images/s. Medians.

    python scripts/diagnostics/packaged_vit_speed.py [--size 112] [--batch 32] [--runs 5] [--threads N]
"""

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from fedmoap.backbones.packaged_vit import PackagedViTBackbone


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--cache", default=None, help="cache dir (default: a new temporary one)")
    ap.add_argument("--bridge", type=int, default=64, help="bridge images (timings do not depend on them)")
    return ap.parse_args(argv)


def median_seconds(fn, runs: int):
    """Median wall and process-CPU seconds of ``fn`` over ``runs`` runs after one warm-up. On a
    shared machine the CPU time of a 1-thread run estimates its uncontended wall time."""
    fn()
    wall, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu), wall


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("threads", torch.get_num_threads())
    bb = PackagedViTBackbone.build(args.cache or tempfile.mkdtemp(), args.size, bridge_images=args.bridge)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    labels = torch.randint(0, 10, (args.batch,), generator=g)
    with torch.no_grad():
        text = F.normalize(bb.encode_prompts(bb.prepare_prompts([f"a photo of a {i}." for i in range(10)], 0)), dim=-1)

    def step_fn(groups):
        params = [p for group in groups for p in group.values()]
        opt = torch.optim.SGD(params, lr=0.01)

        def step():
            opt.zero_grad()
            feats = F.normalize(bb.encode_image_prompted(images, groups), dim=-1)
            F.cross_entropy(bb.logit_scale * feats @ text.T, labels).backward()
            opt.step()

        return step

    deep = [{i: (0.02 * torch.randn(10, 384, generator=g)).requires_grad_() for i in range(12)}]
    shallow = [{0: (0.02 * torch.randn(8, 384, generator=g)).requires_grad_()}]
    for name, groups in (("VPT-deep 10x12", deep), ("VPT-shallow 8", shallow)):
        med, cpu, times = median_seconds(step_fn(groups), args.runs)
        print(
            f"{name}: {med:.2f} s/step wall ({args.batch / med:.1f} img/s), {cpu:.2f} s CPU; "
            f"wall runs {[round(t, 2) for t in times]}"
        )
    with torch.no_grad():
        med, cpu, times = median_seconds(lambda: bb.encode_image(images), args.runs)
    print(
        f"inference: {args.batch / med:.1f} img/s wall ({med:.2f} s/batch), {args.batch / cpu:.1f} img/s "
        f"per CPU second; wall runs {[round(t, 2) for t in times]}"
    )
    print("load average", open("/proc/loadavg").read().split()[:3])


if __name__ == "__main__":
    main()
