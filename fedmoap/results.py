"""Per-round results: the ``results.json`` contract and the TensorBoard scalars."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedmoap.io import atomic_write_text


def round_record(t: int, counts: dict[int, tuple[int, int]] | None, participants: list[int],
                 bytes_up: int, bytes_down: int) -> dict[str, Any]:
    """One entry of ``results.json``'s ``rounds``: per client (correct, n) and accuracy (float64),
    mean and std unweighted across clients. A round that was not evaluated (``fed.eval_every``)
    has no accuracies and ``evaluated: false``."""
    if counts is None:
        return {"round": t, "evaluated": False, "bytes_up": int(bytes_up),
                "bytes_down": int(bytes_down), "participants": list(participants)}
    accs = {c: (k / n if n else float("nan")) for c, (k, n) in counts.items()}
    values = [a for a in accs.values() if not math.isnan(a)]
    mean = sum(values) / len(values) if values else float("nan")
    std = math.sqrt(sum((a - mean) ** 2 for a in values) / len(values)) if values else float("nan")
    return {"round": t,
            "clients": {str(c): {"acc": accs[c], "correct": counts[c][0], "n": counts[c][1]}
                        for c in sorted(counts)},
            "mean_acc": mean, "std_acc": std, "evaluated_clients": len(values),
            "bytes_up": int(bytes_up), "bytes_down": int(bytes_down), "participants": list(participants)}


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Best round (by mean accuracy; the first on ties) and the mean of the last five evaluated
    rounds."""
    rounds = [r for r in rounds if "mean_acc" in r]
    if not rounds:
        return {"best_round": 0, "best_mean_acc": float("nan"), "last5_mean_acc": float("nan")}
    best = max(rounds, key=lambda r: (r["mean_acc"], -r["round"]))
    last = [r["mean_acc"] for r in rounds[-5:]]
    return {"best_round": best["round"], "best_mean_acc": best["mean_acc"],
            "last5_mean_acc": sum(last) / len(last),
            "final_mean_acc": rounds[-1]["mean_acc"], "final_std_acc": rounds[-1]["std_acc"]}


def write_results(path: Path, rounds: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    """Strict JSON: a missing value (NaN) is written as null."""
    data = _nan_to_none({"rounds": rounds, "summary": summary(rounds), **extra})
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False))


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """TensorBoard scalars of a round: ``client/<id>/acc``, ``mean/acc``, ``std/acc``, traffic,
    and with differential privacy ``privacy/eps_rdp``, ``privacy/eps_prv`` (spent so far)."""
    out = {f"client/{cid}/acc": v["acc"] for cid, v in record.get("clients", {}).items()
           if v["acc"] is not None and not math.isnan(v["acc"])}
    if "mean_acc" in record:
        out.update({"mean/acc": record["mean_acc"], "std/acc": record["std_acc"]})
    out.update({"comm/bytes_up": float(record["bytes_up"]), "comm/bytes_down": float(record["bytes_down"])})
    out.update({f"privacy/{k}": float(record[k]) for k in ("eps_rdp", "eps_prv")  # dp.mode on
                if record.get(k) is not None})
    return out
