"""CoCoOp's local step against the reference's per-image cost.

The floor is what CoCoOp's reference code does per step: for every image of the batch, the C
full-length (77-token, unshared) prompts of that image's context through the text tower, then the
cross-entropy of all images, backward and the SGD step. The step is fedmoap's: one call of the
shared-prefix encoder for the whole batch (each image's ``[SOS][context]`` prefix once, each
class's own tokens attending to it), same loss, backward, step. Both compute the same logits (the
maximum difference is reported: the targets are <= 1e-5). Step and floor alternate (median of
``repeats``), random weights, batch ``--batch`` images of cached-feature shape.

    cd benchmarks && python cocoop_step.py [--archs RN50 ViT-B-16] [--classes 10 100]
                                           [--batch 4] [--repeats 3] [--json FILE]

Targets: step / floor <= 0.35 at C = 10 and <= 0.25 at C = 100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from local_step import paired

from fedmoap.backbones.base import Backbone
from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config.sections import TrainArgs
from fedmoap.methods.base import RunContext
from fedmoap.methods.cocoop import CoCoOp

TARGETS = {10: 0.35, 100: 0.25}


def run(backbone: Backbone, classes: int, batch: int = 4, repeats: int = 3) -> dict:
    gen = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(batch, backbone.embed_dim, generator=gen), dim=-1)
    labels = torch.randint(classes, (batch,), generator=gen)
    run_ctx = RunContext(seed=0, num_clients=1, train=TrainArgs(batch_size=batch), keep_optimizer_state=False)
    client = CoCoOp().build_client(backbone, [f"class number {i}" for i in range(classes)], run_ctx)
    client.load_client(0, None)
    optim = client.configure_optimizers()["optimizer"]
    share, trunc = backbone.share_prefix, backbone.truncate
    backbone.share_prefix = backbone.truncate = False
    full = backbone.prepare_prompts([client.method.template.format(c) for c in client.classnames], client.slots.n_ctx)
    backbone.share_prefix, backbone.truncate = share, trunc

    def reference_logits() -> torch.Tensor:
        backbone.share_prefix = backbone.truncate = False
        try:
            ctx = client.image_contexts(features)
            rows = [
                backbone.logit_scale * f @ F.normalize(backbone.encode_prompts(full, c), dim=-1).t()
                for f, c in zip(features, ctx)
            ]
        finally:
            backbone.share_prefix, backbone.truncate = share, trunc
        return torch.stack(rows)

    def step() -> None:
        loss = F.cross_entropy(client.conditioned_logits(features), labels)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    def floor() -> None:
        loss = F.cross_entropy(reference_logits(), labels)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    with torch.no_grad():
        diff = float((client.conditioned_logits(features) - reference_logits()).abs().max())
    ms, floor_ms = (1e3 * s for s in paired([step, floor], repeats))
    return {
        "name": f"cocoop_step/{backbone.name}/C={classes}",
        "classes": classes,
        "batch": batch,
        "ms": ms,
        "floor_ms": floor_ms,
        "ratio_to_floor": ms / floor_ms,
        "max_abs_diff": diff,
        "target": TARGETS.get(classes),
        "prompt_tokens": client.slots.seq_len,
        "full_tokens": full.seq_len,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| CoCoOp step (random weights) | batch | ms | floor ms | step / floor | target | max diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['ms']:.0f} | {r['floor_ms']:.0f} "
            f"| {r['ratio_to_floor']:.3f} | {r['target']} | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", nargs="+", default=["RN50", "ViT-B-16"])
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the rows here")
    a = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for arch in a.archs:
        backbone = OpenCLIPBackbone.build(arch, None)
        for c in a.classes:
            rows.append(run(backbone, c, a.batch, a.repeats))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    if a.json:
        a.json.write_text(
            json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, indent=1)
        )
