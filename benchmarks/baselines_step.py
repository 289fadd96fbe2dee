"""The local step of each baseline of pFedMoAP's tables against the same floor as
``local_step.py``: one text-tower forward and backward over the C class prompts at the truncated
length (what any prompt method pays per step).

Each method's step is its own ``training_step`` (batch 32 of cached features; FedOTP: of cached
per-patch tokens, the optimal-transport solve included), ``zero_grad``, ``backward`` and the SGD
step, on RN50 with random weights at C = 10. Step and floor alternate (median of ``repeats``).
FedOTP's tokens are the real RN50 attention-pool outputs of random images (the OT's iteration
count depends on the values); its transport-plan solve is also timed alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from local_step import paired

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config.sections import TrainArgs
from fedmoap.methods import registry
from fedmoap.methods.base import RunContext
from fedmoap.methods.fedotp import transport_plan

BATCH = 32
METHODS = [
    "promptfl",
    "promptfl_ft",
    "fedprox",
    "fedper",
    "fedamp",
    "pfedprompt",
    "fedotp",
    "fedpgp",
    "kgcoop",
    "promptfolio",
    "prograd",
    "plot",
    "fedtpg",
    "fedpha",
    "cocoop",
]
"""PromptFL for reference; PromptFL+FT's step is PromptFL's (its fine-tuning at evaluation
repeats it ``ft_epochs`` times per client and evaluation)."""


def run(backbone: OpenCLIPBackbone, classes: int = 10, repeats: int = 5, methods: list[str] = METHODS) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    size = backbone.image_size
    images = torch.randn(BATCH, 3, size, size, generator=gen)
    with torch.no_grad():
        tokens = F.normalize(backbone.encode_image_tokens(images), dim=-1)
    features = F.normalize(torch.randn(BATCH, backbone.embed_dim, generator=gen), dim=-1)
    labels = torch.randint(classes, (BATCH,), generator=gen)
    batch = {"features": features, "tokens": tokens, "label": labels}
    run_ctx = RunContext(seed=0, num_clients=2, train=TrainArgs(batch_size=BATCH), keep_optimizer_state=True)
    names = [f"class number {i}" for i in range(classes)]
    rows = []
    for name in methods:
        method = registry()[name]()
        client = method.build_client(backbone, names, run_ctx)
        server = method.build_server(client.global_init(), run_ctx)
        client.load_client(0, None)
        client.receive(server.payload(0, 1))
        optim = client.configure_optimizers()["optimizer"]
        mine = {k: batch[k] for k in (*method.inputs, "label")}

        def step() -> None:
            loss = client.training_step(mine)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()

        # one context of the method's length: the floor is one prompt set (PLOT's N prompts and
        # FedTPG's generator, which has no context parameter, count against it)
        ctx = (torch.randn(client.slots.n_ctx, backbone.ctx_width, generator=gen) * 0.02).requires_grad_(True)

        def floor() -> None:
            backbone.encode_prompts(client.slots, ctx).sum().backward()
            ctx.grad = None

        ms, floor_ms = (1e3 * s for s in paired([step, floor], repeats))
        row = {
            "name": f"baseline_step/{name}/{backbone.name}/C={classes}",
            "method": name,
            "classes": classes,
            "batch": BATCH,
            "ms": ms,
            "floor_ms": floor_ms,
            "ratio_to_floor": ms / floor_ms,
            "trainable": sum(p.numel() for p in client.parameters()),
            "tokens": client.slots.seq_len,
        }
        if name == "fedotp":
            with torch.no_grad():
                sim = torch.einsum("bmd,ncd->bcmn", tokens, client.prompt_features())
            m = client.method
            ot_ms = 1e3 * paired([lambda: transport_plan(sim, m.eps, m.gamma, True, m.max_iter, m.thresh)], repeats)[0]
            ot_log_ms = (
                1e3
                * paired(
                    [lambda: transport_plan(sim, m.eps, m.gamma, True, m.max_iter, m.thresh, log_domain=True)], repeats
                )[0]
            )
            row.update(
                {"ot_ms": ot_ms, "ot_share": ot_ms / ms, "ot_log_domain_ms": ot_log_ms, "patches": tokens.shape[1]}
            )
        rows.append(row)
        extra = f", OT {row['ot_ms']:.0f} ms (log domain {row['ot_log_domain_ms']:.0f} ms)" if "ot_ms" in row else ""
        print(f"  {row['name']}: {ms:.0f} ms, floor {floor_ms:.0f} ms, ratio {ms / floor_ms:.2f}{extra}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| baseline local step (RN50, batch 32) | ms | floor ms | step / floor | notes |", "|---|---|---|---|---|"]
    for r in rows:
        note = ""
        if "ot_ms" in r:
            note = (
                f"OT solve {r['ot_ms']:.0f} ms ({100 * r['ot_share']:.0f} % of the step; log domain "
                f"{r['ot_log_domain_ms']:.0f} ms), {r['patches']} patches"
            )
        lines.append(
            f"| {r['method']}, C = {r['classes']} | {r['ms']:.0f} | {r['floor_ms']:.0f} "
            f"| {r['ratio_to_floor']:.2f} | {note} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    a = ap.parse_args()
    torch.manual_seed(0)
    rows = run(OpenCLIPBackbone.build("RN50", None), repeats=a.repeats, methods=a.methods)
    print(table(rows))
    if a.json:
        a.json.write_text(
            json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, indent=1)
        )
