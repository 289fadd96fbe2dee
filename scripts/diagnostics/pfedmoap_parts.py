"""Which part of a finished pFedMoAP run's clients carries (or loses) the accuracy: each client's
test accuracy at the last checkpoint with the full logits (Eq. 10), the local-prompt term alone,
the MoE term alone, the MoE without the non-local experts, and the global prompt alone.

    python scripts/diagnostics/pfedmoap_parts.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fedmoap.run.parse import parse_fit
from fedmoap.run.reevaluate import restore_run


def parts(run_dir: Path, backbones: dict) -> dict[str, list[float]]:
    """Each client's accuracy per part of the logits, at the run's newest checkpoint (the run
    rebuilt by the one builder; ``backbones`` keeps one backbone per model and seed)."""
    trained, _, _ = parse_fit(["fit", "--config", str(run_dir / "config.yaml")])
    key = (repr(trained.model), trained.seed)
    fed, cfg, _ = restore_run(run_dir, backbone=backbones.get(key))
    backbone, module, server, store, data = fed.module.backbone, fed.module, fed.server, fed.store, fed.data
    backbones[key] = backbone
    s, lam = backbone.logit_scale, cfg.method.lam
    out: dict[str, list[float]] = {}
    with torch.no_grad():
        for cid in range(cfg.data.num_clients):
            module.load_client(cid, store.get(cid))
            module.prepare_eval(server.eval_payload(cid))
            batch = next(data.test_batches(cid, 10_000))
            y = batch.pop("label")
            local = module.text_features()
            full = module.logits(batch, local)
            local_only = s * batch["features"] @ local.t()
            experts = module.experts
            module.set_experts(experts[:0] if experts is not None else None)
            alone = module.logits(batch, local) - lam * local_only
            module.set_experts(experts)
            glob = s * batch["features"] @ module.text_features(server.global_state["prompt"]).t()
            for name, logits in [
                ("full", full),
                ("local prompt term", local_only),
                ("MoE term", full - lam * local_only),
                ("MoE, local expert only", alone),
                ("global prompt", glob),
            ]:
                out.setdefault(name, []).append((logits.argmax(1) == y).float().mean().item())
    return out


def main() -> None:
    cache: dict = {}
    for run_dir in map(Path, sys.argv[1:]):
        res = parts(run_dir, cache)
        print(run_dir)
        for name, accs in res.items():
            print(
                f"  {name:24s} mean {100 * sum(accs) / len(accs):6.2f}  per client "
                + " ".join(f"{100 * a:5.1f}" for a in accs)
            )


if __name__ == "__main__":
    main()
