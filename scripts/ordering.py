"""The ordering study: zero-shot, CoOp, PromptFL and pFedMoAP variants where zero-shot is at
chance (a pathological split of a dataset whose class names mean nothing to the text tower), over
seeds; each seed's split identical for all.

    python scripts/ordering.py [--out runs/ordering] [--seeds 0 1 2] [--variants KEY ...]
                               [--keep-names] [-- extra fit overrides]

Setting: the offline default (packaged towers, Fashion-MNIST, SGD lr 0.01, batch 32, 150 test
images per client) with the class names replaced by meaningless words (zero-shot at chance), a
pathological split with 2 classes per client, 8 shots, 5 clients, 10 rounds of 5 local epochs.
On your own dataset, pass its settings after ``--`` (they override the setting's): e.g.
``python scripts/ordering.py --out runs/ordering-mine -- --data.source /data/mine
--model.arch ViT-B-16 --model.pretrained /weights/vit-b-16.pt``. Its class names are replaced by
as many meaningless words (``--keep-names`` keeps them: then zero-shot is not at chance unless
the names are already meaningless).
Prints and writes ``OUT/ordering.md`` and ``OUT/ordering.json`` (mean ± sample std over seeds
of the final round's and of the last 5 rounds' mean per-client accuracy, and every seed's).
``scripts/diagnostics/pfedmoap_parts.py OUT/pfedmoap/seed0`` splits a pFedMoAP run's accuracy
into its parts (local-prompt term, MoE term, experts).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import fmt, run_cell  # noqa: E402

WORDS = ["blicket", "dax", "wug", "fep", "toma", "zorp", "kiki", "bouba", "gazzer", "mib"]
"""Meaningless words for the first 10 classes (Fashion-MNIST's in the committed evidence)."""


def nonsense_names(count: int) -> list[str]:
    """``count`` distinct words that mean nothing to a text tower: :data:`WORDS`, then
    consonant-vowel pseudo-words (``bafo``, ``bafu``, ...)."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    made = (f"{c1}{v1}{c2}{v2}" for c1 in consonants for v1 in vowels for c2 in consonants for v2 in vowels)
    out = list(WORDS[:count])
    while len(out) < count:
        word = next(made)
        if word not in out:
            out.append(word)
    return out


def classnames_argument(overrides: list[str]) -> list[str]:
    """``--data.classnames [...]`` with one meaningless word per class of the dataset the
    overrides select (the offline default's Fashion-MNIST unless they name another source)."""
    from fedmoap.cli import parse_fit
    from fedmoap.data.sources import load_source

    cfg, _, _ = parse_fit(["fit", *SETTING, *overrides])
    count = len(load_source(cfg.data).classnames)
    return ["--data.classnames", "[" + ", ".join(nonsense_names(count)) + "]"]


SETTING = ["--data.partition", "pathological",
           "--data.classes_per_client", "2", "--data.shots", "8", "--data.num_clients", "5",
           "--fed.rounds", "10", "--train.local_epochs", "5"]
VARIANTS = {  # key (run directory) -> (label, fit arguments)
    "zeroshot": ("zero-shot", ["--method", "zeroshot"]),
    "coop": ("CoOp", ["--method", "coop"]),
    "promptfl": ("PromptFL", ["--method", "promptfl"]),
    "pfedmoap": ("pFedMoAP (paper defaults)", ["--method", "pfedmoap"]),
    "pfedmoap-optim-reset": ("pFedMoAP, optimizer state reset every round",
                             ["--method", "pfedmoap", "--train.optimizer_state", "reset"]),
    "pfedmoap-k0": ("pFedMoAP, no non-local experts (K = 0)",
                    ["--method", "pfedmoap", "--method.num_experts", "0"]),
    "pfedmoap-own": ("pFedMoAP, local prompt continues (local_init: own)",
                     ["--method", "pfedmoap", "--method.local_init", "own"]),
    "pfedmoap-gating-lr": ("pFedMoAP, gating lr 0.05",
                           ["--method", "pfedmoap", "--method.gating_lr", "0.05"]),
    "pfedmoap-lam1": ("pFedMoAP, λ = 1", ["--method", "pfedmoap", "--method.lam", "1.0"]),
}
DEFAULT = ["zeroshot", "coop", "promptfl", "pfedmoap", "pfedmoap-optim-reset", "pfedmoap-k0",
           "pfedmoap-own"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/ordering"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=DEFAULT, choices=list(VARIANTS))
    ap.add_argument("--keep-names", action="store_true",
                    help="keep the dataset's class names instead of meaningless words")
    ap.add_argument("overrides", nargs="*", help="extra `fedmoap fit` arguments, after --")
    a = ap.parse_args(argv)
    names = [] if a.keep_names else classnames_argument(a.overrides)
    raw: dict[str, list[dict]] = {}
    for seed in a.seeds:
        for key in a.variants:
            label, args = VARIANTS[key]
            cell = run_cell(a.out / key / f"seed{seed}",
                            [*args, *names, *SETTING, "--seed", str(seed), *a.overrides])
            raw.setdefault(key, []).append({"seed": seed, **cell})
            print(f"seed {seed} {label}: final {100 * cell['final']:.2f} last5 {100 * cell['last5']:.2f} "
                  f"({cell['seconds']:.0f} s)", flush=True)
    lines = ["| variant | final round (%) | last 5 rounds (%) | final, per seed |", "|---|---|---|---|"]
    for key, cells in raw.items():
        per_seed = ", ".join(f"{100 * c['final']:.1f}" for c in cells)
        lines.append(f"| {VARIANTS[key][0]} | {fmt([c['final'] for c in cells])} "
                     f"| {fmt([c['last5'] for c in cells])} | {per_seed} |")
    table = "\n".join(lines)
    print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "ordering.md").write_text(table + "\n")
    result = {"setting": [*names, *SETTING], "seeds": a.seeds, "overrides": a.overrides, "variants": raw}
    (a.out / "ordering.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
