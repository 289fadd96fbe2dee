"""Which part of a finished pFedMoAP run's clients carries (or loses) the accuracy: each client's
test accuracy at the last checkpoint with the full logits (Eq. 10), the local-prompt term alone,
the MoE term alone, the MoE without the non-local experts, and the global prompt alone.

    python scripts/diagnostics/pfedmoap_parts.py RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from fedmoap.backbones import build_backbone
from fedmoap.checkpoint import load_latest
from fedmoap.cli import parse_fit
from fedmoap.config import config_dict
from fedmoap.data.sources import load_source
from fedmoap.data.split import load_split
from fedmoap.features import FeatureCache
from fedmoap.federated_data import gather_inputs
from fedmoap.fit import DEFAULT_CACHE, config_digest
from fedmoap.methods.base import RunContext
from fedmoap.store import ClientStore


def parts(run_dir: Path, backbone_cache: dict) -> dict[str, list[float]]:
    cfg, _, _ = parse_fit(["fit", "--config", str(run_dir / "config.yaml")])
    key = (cfg.model.arch, cfg.seed)
    if key not in backbone_cache:
        backbone_cache[key] = build_backbone(cfg.model, cfg.seed)
    backbone = backbone_cache[key]
    source = load_source(cfg.data)
    split = load_split(run_dir / "split.json", source, cfg.data.num_clients)
    cache = FeatureCache(Path(cfg.data.feature_cache or DEFAULT_CACHE / "features").expanduser(), backbone)
    data = gather_inputs(frozenset({"features"}), cfg.data, source, split, cache, None, None, cfg.seed)
    ckpt = load_latest(run_dir, config_digest(config_dict(cfg)))
    run = RunContext(cfg.seed, cfg.data.num_clients, cfg.train, True)
    module = cfg.method.build_client(backbone, source.classnames, run)
    server = cfg.method.build_server(module.global_init(), run)
    server.load_state_dict(ckpt["server"])
    store = ClientStore(run_dir / "clients")
    store.load_state_dict(ckpt["store"])
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
            for name, logits in [("full", full), ("local prompt term", local_only),
                                 ("MoE term", full - lam * local_only),
                                 ("MoE, local expert only", alone), ("global prompt", glob)]:
                out.setdefault(name, []).append((logits.argmax(1) == y).float().mean().item())
    return out


def main() -> None:
    cache: dict = {}
    for run_dir in map(Path, sys.argv[1:]):
        res = parts(run_dir, cache)
        print(run_dir)
        for name, accs in res.items():
            print(f"  {name:24s} mean {100 * sum(accs) / len(accs):6.2f}  per client "
                  + " ".join(f"{100 * a:5.1f}" for a in accs))


if __name__ == "__main__":
    main()
