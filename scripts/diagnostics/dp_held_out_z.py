"""How much the held-out-clients fix moves the solved DP noise multiplier on configs/smoke.yaml
(eval.modes [local,unseen_clients], record_sgd, clip 1, epsilon 8): z solved from the federation's
own plan (who trains) against the plan that also counted the held-out clients, seeds 0-5.

    python scripts/diagnostics/dp_held_out_z.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fedmoap.federation.build import build_federation
from fedmoap.federation.privacy import private_training
from fedmoap.federation.rounds import default_fabric
from fedmoap.run.parse import parse_fit

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def held_out_z(seed: int, method: str) -> tuple[list[int], float, float]:
    """(held-out clients, z solved from the plan that counted them, z solved from the federation's
    own plan) for ``method`` on the smoke config at ``seed``."""
    extra = (
        ["--method.epochs", "2"] if method == "coop" else ["--method.shared_depth", "2", "--method.shared_tokens", "2"]
    )
    cfg, _, _ = parse_fit(
        [
            "fit",
            "--config",
            str(SMOKE),
            "--method",
            method,
            *extra,
            "--seed",
            str(seed),
            "--eval.modes",
            "[local,unseen_clients]",
            "--dp.mode",
            "record_sgd",
            "--dp.clip",
            "1.0",
            "--dp.epsilon",
            "8",
            "--fabric.threads",
            "1",
        ]
    )
    fed, res = build_federation(cfg, run_dir=Path(tempfile.mkdtemp()), fabric=default_fabric())
    after = fed.privacy.noise_multiplier
    before = private_training(  # the plan that counted the held-out clients
        cfg.dp,
        seed=cfg.seed,
        method=cfg.method,
        module=fed.module,
        inner=fed.training.inner,
        schedule=fed.schedule,
        trainers=lambda t: cfg.method.participants(fed.schedule.participants(t), fed.data.num_clients, t),
    ).noise_multiplier
    return res.held_out, before, after


def main() -> None:
    for seed in range(6):
        for method in ["coop", "local_vpt"]:
            try:
                held_out, before, after = held_out_z(seed, method)
            except Exception as e:
                print(method, seed, "error", e)
                continue
            print(
                f"seed {seed} {method:9s} held-out {held_out}: z before {before:.4f} after {after:.4f} "
                f"({100 * (after - before) / before:+.2f} %)",
                flush=True,
            )


if __name__ == "__main__":
    main()
