"""The ``results.json`` schema, written and read here: its rounds (:func:`round_record` and the
evaluation modes' entries), its summary, its header (:func:`header`), the file
(:func:`write_results`, :func:`read_results`, :func:`rounds_done`), the metric values a summary
or a round record holds (:func:`summary_metrics`, :func:`client_accs`) and the TensorBoard scalars
and HParams of the same numbers. Reading imports no torch (``fedmoap report``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedmoap.errors import FedmoapError

__all__ = [
    "round_record",
    "summary",
    "header",
    "write_results",
    "scalars",
    "MODE_KEYS",
    "B2N_METRICS",
    "accuracy_entry",
    "hmean",
    "base2novel_entry",
    "unseen_entry",
    "PROTOCOLS",
    "protocol_entry",
    "mode_summary",
    "mode_scalars",
    "HPARAM_SECTIONS",
    "hparams",
    "write_hparams",
    "read_results",
    "rounds_done",
    "summary_metrics",
    "CLIENT_MODES",
    "client_accs",
    "number",
]


def round_record(
    t: int, counts: dict[int, tuple[int, int]] | None, participants: list[int], bytes_up: int, bytes_down: int
) -> dict[str, Any]:
    """One entry of ``results.json``'s ``rounds``: per client (correct, n) and accuracy (float64),
    mean and std unweighted across clients. A round that was not evaluated (``fed.eval_every``)
    has no accuracies and ``evaluated: false``."""
    if counts is None:
        return {
            "round": t,
            "evaluated": False,
            "bytes_up": int(bytes_up),
            "bytes_down": int(bytes_down),
            "participants": list(participants),
        }
    accs = {c: (k / n if n else float("nan")) for c, (k, n) in counts.items()}
    values = [a for a in accs.values() if not math.isnan(a)]
    mean = sum(values) / len(values) if values else float("nan")
    std = math.sqrt(sum((a - mean) ** 2 for a in values) / len(values)) if values else float("nan")
    return {
        "round": t,
        "clients": {str(c): {"acc": accs[c], "correct": counts[c][0], "n": counts[c][1]} for c in sorted(counts)},
        "mean_acc": mean,
        "std_acc": std,
        "evaluated_clients": len(values),
        "worst_acc": min(values) if values else float("nan"),
        "pooled_acc": (
            sum(k for k, _ in counts.values()) / total
            if (total := sum(n for _, n in counts.values()))
            else float("nan")
        ),
        "bytes_up": int(bytes_up),
        "bytes_down": int(bytes_down),
        "participants": list(participants),
    }


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Best round (by mean accuracy; the first on ties) and the mean of the last five evaluated
    rounds."""
    rounds = [r for r in rounds if "mean_acc" in r]
    if not rounds:
        return {"best_round": 0, "best_mean_acc": float("nan"), "last5_mean_acc": float("nan")}
    best = max(rounds, key=lambda r: (r["mean_acc"], -r["round"]))
    last = [r["mean_acc"] for r in rounds[-5:]]
    return {
        "best_round": best["round"],
        "best_mean_acc": best["mean_acc"],
        "last5_mean_acc": sum(last) / len(last),
        "final_mean_acc": rounds[-1]["mean_acc"],
        "final_std_acc": rounds[-1]["std_acc"],
        "final_worst_acc": rounds[-1].get("worst_acc"),
        "final_pooled_acc": rounds[-1].get("pooled_acc"),
    }


def header(
    *,
    method: str,
    seed: int,
    num_clients: int,
    config_digest: str,
    world_size: int,
    engine: str,
    code: Any,
    eval_modes: list[str],
    checks: dict[str, Any],
    privacy: dict[str, Any] | None,
    engine_run_id: str | None = None,
) -> dict[str, Any]:
    """The entries of a run's ``results.json`` beside ``rounds`` and ``summary`` (``extra`` of
    :func:`write_results`), in the file's order: the method (its short name, else its class path),
    seed, number of clients, config digest, world size, the engine that ran the clients (fit or
    flower) and, where it has one, the engine's id of the run (``engine_run_id``), the code version,
    the evaluation modes, the set-up checks' entries and, with
    differential privacy, the accountant's summary (the same dict, which it updates every round)."""
    out = {
        "method": method,
        "seed": seed,
        "num_clients": num_clients,
        "config_digest": config_digest,
        "world_size": world_size,
        "engine": engine,
        **({"engine_run_id": engine_run_id} if engine_run_id is not None else {}),
        "code": code,
        "eval_modes": eval_modes,
        **checks,
    }
    if privacy is not None:
        out["privacy"] = privacy
    return out


def write_results(path: Path, rounds: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    """Strict JSON: a missing value (NaN) is written as null."""
    from fedmoap.io import atomic_write_text

    data = _nan_to_none({"rounds": rounds, "summary": {**summary(rounds), **mode_summary(rounds)}, **extra})
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
    out = {
        f"client/{cid}/acc": v["acc"]
        for cid, v in record.get("clients", {}).items()
        if v["acc"] is not None and not math.isnan(v["acc"])
    }
    if "mean_acc" in record:
        out.update(
            {
                "mean/acc": record["mean_acc"],
                "std/acc": record["std_acc"],
                "worst/acc": record["worst_acc"],
                "pooled/acc": record["pooled_acc"],
            }
        )
    out.update({"comm/bytes_up": float(record["bytes_up"]), "comm/bytes_down": float(record["bytes_down"])})
    out.update(
        {
            f"privacy/{k}": float(record[k])
            for k in ("eps_rdp", "eps_prv")  # dp.mode on
            if record.get(k) is not None
        }
    )
    return out


# ----- evaluation modes (computed by fedmoap/federation/evaluation.py) ----------------------------
MODE_KEYS = ("global", "neighbor", "base2novel", "unseen_clients", "xdomain", "lodo", "xdataset")
"""The round-record entries of the evaluation modes beyond ``local`` (whose keys are the record's
own ``clients``/``mean_acc``/``std_acc``)."""
B2N_METRICS = ("local", "base", "novel", "hm", "hm3")


def accuracy_entry(counts: dict[int, tuple[int, int]]) -> dict[str, Any]:
    """A mode's accuracies with the local keys' shape: :func:`round_record`'s per-client entries
    (correct, n, acc) and statistics across clients (``mean_acc``, ``std_acc``, ...), without the
    round's own keys."""
    record = round_record(0, counts, [], 0, 0)
    return {k: v for k, v in record.items() if k not in ("round", "bytes_up", "bytes_down", "participants")}


def hmean(*values: float) -> float:
    """Harmonic mean (0 if any value is 0; NaN if any is NaN): HM(base, novel) = 2BN/(B+N),
    HM(local, base, novel) = 3/(1/L + 1/B + 1/N)."""
    if any(math.isnan(v) for v in values):
        return float("nan")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def base2novel_entry(
    local: dict[int, tuple[int, int]], base: dict[int, tuple[int, int]], novel: dict[int, tuple[int, int]]
) -> dict[str, Any]:
    """Per client: local (own test set), base, novel accuracy, ``hm`` = HM(base, novel), ``hm3``
    = HM(local, base, novel), and the counts; ``mean``: the unweighted mean over clients of each
    (so ``mean.hm`` is the mean of the clients' HMs); ``hm_of_means``: the HMs of the mean
    accuracies (the other convention found in papers' tables)."""

    def acc(k: int, n: int) -> float:
        return k / n if n else float("nan")

    clients = {}
    for c in sorted(base):
        lo, b, nv = acc(*local[c]), acc(*base[c]), acc(*novel[c])
        clients[str(c)] = {
            "local": lo,
            "base": b,
            "novel": nv,
            "hm": hmean(b, nv),
            "hm3": hmean(lo, b, nv),
            "base_correct": base[c][0],
            "base_n": base[c][1],
            "novel_correct": novel[c][0],
            "novel_n": novel[c][1],
        }
    mean = {k: _nanmean([v[k] for v in clients.values()]) for k in B2N_METRICS}
    return {
        "clients": clients,
        "mean": mean,
        "hm_of_means": {
            "hm": hmean(mean["base"], mean["novel"]),
            "hm3": hmean(mean["local"], mean["base"], mean["novel"]),
        },
    }


def unseen_entry(
    held_out: list[int], epochs: int, plain: dict[int, tuple[int, int]], adapted: dict[int, tuple[int, int]] | None
) -> dict[str, Any]:
    """Held-out clients on their own test sets: ``no_adaptation`` (the method's global component,
    as a never-trained client) and ``adapted`` (after ``epochs`` epochs of local training, never
    kept); each with the shape of the local keys."""
    out = {"held_out": list(held_out), "adaptation_epochs": epochs, "no_adaptation": accuracy_entry(plain)}
    if adapted is not None:
        out["adapted"] = accuracy_entry(adapted)
    return out


PROTOCOLS = ("xdomain", "lodo", "xdataset")
"""The generalisation protocols (fedmoap/federation/protocols.py): entries of :func:`protocol_entry`'s shape."""


def protocol_entry(
    shared: dict[str, tuple[int, int]], personal: dict[int, dict[str, tuple[int, int]]]
) -> dict[str, Any]:
    """A generalisation protocol's round entry: per target domain ``global``
    (the method's global component: correct, n, acc) and ``personal`` (each training client's own
    model, with the local keys' shape); ``mean``: the unweighted mean over targets of the global
    accuracy and of the clients' mean accuracy."""
    targets = {
        d: {
            "global": {"correct": k, "n": n, "acc": k / n if n else float("nan")},
            "personal": accuracy_entry({c: personal[c][d] for c in sorted(personal)}),
        }
        for d, (k, n) in shared.items()
    }
    return {
        "targets": targets,
        "mean": {
            "global": _nanmean([v["global"]["acc"] for v in targets.values()]),
            "personal": _nanmean([v["personal"]["mean_acc"] for v in targets.values()]),
        },
    }


def _protocol_numbers(entry: dict[str, Any]) -> dict[str, float]:
    """``<target>/global``, ``<target>/personal``, ``mean/global``, ``mean/personal``."""
    out = {
        f"{d}/{part}": v[part]["acc" if part == "global" else "mean_acc"]
        for d, v in entry["targets"].items()
        for part in ("global", "personal")
    }
    return {**out, "mean/global": entry["mean"]["global"], "mean/personal": entry["mean"]["personal"]}


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def _final_last5(values: list[float]) -> dict[str, float]:
    return {"final": values[-1], "last5": _nanmean(values[-5:])}


def mode_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Final round and mean of the last five evaluated rounds of every mode present."""
    out: dict[str, Any] = {}
    for mode in ("global", "neighbor"):
        values = [r[mode]["mean_acc"] for r in rounds if mode in r]
        if values:
            fl = _final_last5(values)
            out[mode] = {"final_mean_acc": fl["final"], "last5_mean_acc": fl["last5"]}
    b2n = [r["base2novel"] for r in rounds if "base2novel" in r]
    if b2n:
        out["base2novel"] = {
            "final": dict(b2n[-1]["mean"]),
            "last5": {k: _nanmean([e["mean"][k] for e in b2n[-5:]]) for k in B2N_METRICS},
            "final_hm_of_means": dict(b2n[-1]["hm_of_means"]),
        }
    unseen = [r["unseen_clients"] for r in rounds if "unseen_clients" in r]
    if unseen:
        out["unseen_clients"] = {
            part: {"final_mean_acc": fl["final"], "last5_mean_acc": fl["last5"]}
            for part in ("no_adaptation", "adapted")
            if part in unseen[-1]
            for fl in [_final_last5([e[part]["mean_acc"] for e in unseen if part in e])]
        }
    for mode in PROTOCOLS:
        entries = [_protocol_numbers(r[mode]) for r in rounds if mode in r]
        if entries:
            out[mode] = {
                "final": entries[-1],
                "last5": {k: _nanmean([e.get(k, float("nan")) for e in entries[-5:]]) for k in entries[-1]},
            }
    return out


def mode_scalars(record: dict[str, Any]) -> dict[str, float]:
    """TensorBoard scalars of the evaluation modes: ``<mode>/client/<id>/acc``,
    ``<mode>/mean/acc``, ``<mode>/std/acc`` (global, neighbor); ``base2novel/client/<id>/<m>`` and
    ``base2novel/mean/<m>`` for m in local, base, novel, hm, hm3; ``unseen_clients/client/<id>/acc``
    and ``.../adapted_acc``, ``unseen_clients/mean/acc`` and ``.../adapted_acc``;
    ``<protocol>/<target>/global_acc``, ``.../personal_acc`` and ``<protocol>/mean/global_acc``,
    ``.../personal_acc`` (xdomain, lodo, xdataset). And
    ``privacy/<key>`` for every number of the record's ``privacy`` entry (e.g. epsilon, written
    by differential privacy)."""
    out: dict[str, float] = {}

    def put(tag: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
            out[tag] = float(value)

    for mode in ("global", "neighbor"):
        if mode in record:
            e = record[mode]
            for cid, v in e["clients"].items():
                put(f"{mode}/client/{cid}/acc", v["acc"])
            put(f"{mode}/mean/acc", e["mean_acc"])
            put(f"{mode}/std/acc", e["std_acc"])
    if "base2novel" in record:
        e = record["base2novel"]
        for cid, v in e["clients"].items():
            for k in B2N_METRICS:
                put(f"base2novel/client/{cid}/{k}", v[k])
        for k in B2N_METRICS:
            put(f"base2novel/mean/{k}", e["mean"][k])
    if "unseen_clients" in record:
        e = record["unseen_clients"]
        for part, suffix in (("no_adaptation", "acc"), ("adapted", "adapted_acc")):
            if part in e:
                for cid, v in e[part]["clients"].items():
                    put(f"unseen_clients/client/{cid}/{suffix}", v["acc"])
                put(f"unseen_clients/mean/{suffix}", e[part]["mean_acc"])
    for mode in PROTOCOLS:
        for key, value in (_protocol_numbers(record[mode]) if mode in record else {}).items():
            put(f"{mode}/{key}_acc", value)
    for key, value in (record.get("privacy") or {}).items():  # a place for DP's epsilon per round
        put(f"privacy/{key}", value)
    return out


# ----- TensorBoard HParams -------------------------------------------------------------------------
HPARAM_SECTIONS = ("model", "data", "train", "fed", "eval", "dp")
"""Config sections whose settings become hyper-parameters (``dp`` once differential privacy
has a section); neutral keys (cache paths, batch sizes of encoding, ...) are left out."""


def hparams(
    cfg: dict[str, Any], method: str, rounds: list[dict[str, Any]], neutral: set[tuple[str, str]] = frozenset()
) -> tuple[dict[str, Any], dict[str, float]]:
    """(settings, final metrics) of a run for TensorBoard's HParams tab: ``method``, ``seed``,
    ``method.<knob>``, ``<section>.<key>`` and ``fabric.precision``; metrics
    ``summary/final_mean_acc``, ``summary/last5_mean_acc`` and the same per evaluation mode
    (``summary/<mode>_final_...``), plus ``summary/final_<key>`` of the last round's ``privacy``
    numbers (DP's epsilon)."""
    params: dict[str, Any] = {"method": method, "seed": cfg.get("seed")}
    params.update({f"method.{k}": v for k, v in (cfg.get("method") or {}).get("init_args", {}).items()})
    for section in HPARAM_SECTIONS:
        for key, value in (cfg.get(section) or {}).items():
            if (section, key) not in neutral:
                params[f"{section}.{key}"] = value
    params["fabric.precision"] = (cfg.get("fabric") or {}).get("precision")
    params = {k: _hparam_value(v) for k, v in params.items()}
    s = {**summary(rounds), **mode_summary(rounds)}
    metrics = {"summary/final_mean_acc": s.get("final_mean_acc"), "summary/last5_mean_acc": s.get("last5_mean_acc")}
    for mode in ("global", "neighbor"):
        if mode in s:
            metrics[f"summary/{mode}_final_mean_acc"] = s[mode]["final_mean_acc"]
            metrics[f"summary/{mode}_last5_mean_acc"] = s[mode]["last5_mean_acc"]
    if "base2novel" in s:
        for when in ("final", "last5"):
            metrics.update({f"summary/base2novel_{when}_{k}": v for k, v in s["base2novel"][when].items()})
    for part, entry in s.get("unseen_clients", {}).items():
        metrics[f"summary/unseen_{part}_final_mean_acc"] = entry["final_mean_acc"]
        metrics[f"summary/unseen_{part}_last5_mean_acc"] = entry["last5_mean_acc"]
    for mode in PROTOCOLS:
        for when in ("final", "last5") if mode in s else ():
            metrics.update({f"summary/{mode}_{when}_{k.replace('/', '_')}_acc": v for k, v in s[mode][when].items()})
    evaluated = [r for r in rounds if "privacy" in r]
    if evaluated:
        metrics.update({f"summary/final_{k}": v for k, v in evaluated[-1]["privacy"].items()})
    metrics = {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
    }
    return params, metrics


def _hparam_value(value: Any) -> Any:
    """TensorBoard takes bool, int, float and str: null and containers become their JSON text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def write_hparams(log_dir: Path, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
    """Write a run's HParams session into ``log_dir`` (replacing an earlier one): the settings and
    the final metrics as scalars at ``step``, and deliberately no experiment summary, so that
    TensorBoard's HParams tab over a directory of runs builds its columns from every run's
    settings (with one experiment summary it would show only that run's settings). Written
    beside it first, then renamed: a killed write leaves no half session."""
    import os
    import shutil

    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    from fedmoap.io import temporary_path

    log_dir = Path(log_dir)
    tmp = temporary_path(log_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    _, session_start, session_end = hparams_summary(params, metrics)
    with SummaryWriter(str(tmp)) as writer:
        writer.file_writer.add_summary(session_start)
        writer.file_writer.add_summary(session_end)
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)
    shutil.rmtree(log_dir, ignore_errors=True)
    os.replace(tmp, log_dir)


# ----- reading results.json ---------------------------------------------------------------------
def read_results(path: str | Path) -> dict[str, Any]:
    """A run directory's ``results.json`` as :func:`write_results` wrote it (the one place it is
    parsed); raises ``FileNotFoundError`` if the run has none yet, ``ValueError`` if it is not
    JSON. :func:`fedmoap.run.runs.read_run` checks its shape."""
    return json.loads((Path(path) / "results.json").read_text())


def rounds_done(path: str | Path) -> int:
    """The last round a run directory's ``results.json`` records (0: none, or no file yet)."""
    try:
        rounds = read_results(path).get("rounds") or []
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, AttributeError, KeyError, IndexError, TypeError) as exc:
        raise FedmoapError(f"report: {path}/results.json is unreadable ({' '.join(str(exc).split())[:200]})") from None
    return int(rounds[-1]["round"]) if rounds else 0


def summary_metrics(s: dict[str, Any]) -> dict[str, float]:
    """The value of every metric a ``results.json`` summary holds (fractions; NaN for null), by
    the names of :data:`fedmoap.run.report.METRICS`: ``final``, ``last5``, ``worst``, ``pooled``,
    ``global``, ``neighbor``, ``b2n.<metric>``, ``unseen``, ``unseen.adapted`` and
    ``<protocol>.global`` / ``<protocol>.personal``."""
    out = {"final": number(s.get("final_mean_acc")), "last5": number(s.get("last5_mean_acc"))}
    for key in ("worst", "pooled"):
        if f"final_{key}_acc" in s:
            out[key] = number(s[f"final_{key}_acc"])
    for mode in ("global", "neighbor"):
        if mode in s:
            out[mode] = number(s[mode]["final_mean_acc"])
    if "base2novel" in s:
        out.update({f"b2n.{k}": number(v) for k, v in s["base2novel"]["final"].items()})
    unseen = s.get("unseen_clients", {})
    if "no_adaptation" in unseen:
        out["unseen"] = number(unseen["no_adaptation"]["final_mean_acc"])
    if "adapted" in unseen:
        out["unseen.adapted"] = number(unseen["adapted"]["final_mean_acc"])
    for mode in PROTOCOLS:
        for part in ("global", "personal") if mode in s else ():
            out[f"{mode}.{part}"] = number(s[mode]["final"][f"mean/{part}"])
    return out


CLIENT_MODES = ("local", "global", "neighbor", "unseen", "unseen.adapted") + tuple(f"b2n.{k}" for k in B2N_METRICS)
"""The modes of :func:`client_accs`."""


def client_accs(record: dict[str, Any], mode: str = "local") -> dict[str, float]:
    """Client id -> accuracy in ``mode`` of an evaluated round record (local, global, neighbor;
    base2novel's ``b2n.<metric>``; unseen, unseen.adapted); NaN for null."""
    if mode == "local":
        entry = record
    elif mode in ("global", "neighbor"):
        entry = record.get(mode, {})
    elif mode.startswith("b2n."):
        key = mode.split(".", 1)[1]
        return {c: number(v[key]) for c, v in record.get("base2novel", {}).get("clients", {}).items()}
    elif mode in ("unseen", "unseen.adapted"):
        part = "adapted" if mode.endswith("adapted") else "no_adaptation"
        entry = record.get("unseen_clients", {}).get(part, {})
    else:
        raise FedmoapError(f"report: unknown mode {mode!r}")
    return {c: number(v["acc"]) for c, v in entry.get("clients", {}).items()}


def number(value: Any) -> float:
    """A value of ``results.json`` as a float (null, or anything not a number: NaN)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
