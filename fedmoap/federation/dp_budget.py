"""The privacy budget of ``dp:``: its settings' checks, paper presets, and ε of the Gaussian
mechanism by Opacus's accountants (RDP, PRV), or the noise multiplier a target ε needs. The
mechanisms that spend it and the run's accounting are :mod:`fedmoap.federation.privacy`."""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Iterable

from fedmoap.errors import FedmoapError

if TYPE_CHECKING:
    from fedmoap.config.sections import DPArgs, FabricArgs


__all__ = ["ADJACENCY", "PRESETS", "effective", "problems", "preset_note", "epsilon", "solve_noise_multiplier"]

ADJACENCY = {"client_upload": "client", "record_sgd": "record"}
PRESETS = {"pfedmoap-appendix": {"delta": 0.05, "epsilons": (50.0, 25.0)}}
"""Named settings from papers: pFedMoAP App. C.2 (Table 6) reports epsilon 50 and 25 at delta 0.05."""


def effective(args: DPArgs) -> DPArgs:
    """The settings a preset implies (``pfedmoap-appendix``: delta 0.05, epsilon 50 unless set)."""
    if args.preset is None:
        return args
    preset = PRESETS[args.preset]
    eps = args.epsilon if args.epsilon is not None or args.noise_multiplier is not None else preset["epsilons"][0]
    return replace(args, delta=preset["delta"], epsilon=eps)


def problems(dp: DPArgs, fabric: FabricArgs) -> list[str]:
    """Range and combination checks of ``dp:``, with the ``fabric`` section's precision (each
    message names its key); what the method cannot combine with is
    :mod:`fedmoap.federation.combinations`'."""
    out = []
    if dp.mode == "off":
        set_ = [k for k in ("epsilon", "noise_multiplier", "clip", "preset") if getattr(dp, k) is not None]
        if set_:
            out.append(f"dp.{set_[0]} is set but dp.mode is off (choose dp.mode client_upload or record_sgd)")
        return out
    if dp.clip is None:
        norm = "S of an upload" if dp.mode == "client_upload" else "C of an example gradient"
        out.append(
            f"dp.mode {dp.mode} needs dp.clip (the clip norm {norm}; fedmoap derives no default from the private data)"
        )
    elif not dp.clip > 0:
        out.append("dp.clip must be > 0")
    if dp.epsilon is not None and dp.noise_multiplier is not None:
        out.append(
            "dp.epsilon and dp.noise_multiplier are both set (set one: a target epsilon solves the noise multiplier)"
        )
    elif dp.epsilon is None and dp.noise_multiplier is None and dp.preset is None:
        out.append(f"dp.mode {dp.mode} needs dp.epsilon (a target) or dp.noise_multiplier")
    if dp.epsilon is not None and not dp.epsilon > 0:
        out.append("dp.epsilon must be > 0")
    if dp.noise_multiplier is not None and not dp.noise_multiplier > 0:
        out.append("dp.noise_multiplier must be > 0")
    if not 0 < dp.delta < 1:
        out.append("dp.delta must be in (0, 1)")
    if dp.preset is not None:
        preset = PRESETS[dp.preset]
        if dp.delta not in (1e-5, preset["delta"]):
            out.append(f"dp.preset {dp.preset} sets dp.delta = {preset['delta']}; do not set another")
        if dp.epsilon is not None and dp.epsilon not in preset["epsilons"]:
            out.append(
                f"dp.preset {dp.preset} is epsilon in {{{', '.join(f'{e:g}' for e in preset['epsilons'])}}}, "
                f"not dp.epsilon {dp.epsilon:g} (drop the preset for other budgets)"
            )
    if dp.mode == "record_sgd" and fabric.precision != "32-true":
        out.append(f"dp.mode record_sgd runs in fabric.precision 32-true, not {fabric.precision}")
    return out


def preset_note(args: DPArgs, num_clients: int, min_train: int) -> str | None:
    """What a preset's budget means, printed once at the start of a run."""
    if args.preset is None:
        return None
    eff = effective(args)
    adjacency = ADJACENCY[args.mode]
    n, unit = (num_clients, "clients") if adjacency == "client" else (min_train, "records (smallest client)")
    eps = eff.epsilon if eff.epsilon is not None else float("nan")
    return (
        f"dp.preset {args.preset}: pFedMoAP App. C.2's budget, epsilon {eps:g}, delta {eff.delta:g}. "
        f"epsilon {eps:g} lets an observer's likelihood ratio between two neighbouring datasets reach "
        f"e^{eps:g} = {math.exp(eps):.1e}: no meaningful protection; and delta {eff.delta:g} is the "
        f"chance that even that fails, against 1/n = {1 / n:.2g} for n = {n} {unit} (a mechanism that "
        f"publishes each {'client' if adjacency == 'client' else 'record'} outright with probability delta "
        f"is (0, delta)-DP; the usual rule is delta << 1/n). Use it to reproduce the paper's setting only."
    )


@functools.lru_cache(maxsize=4096)
def epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
    alphas: tuple[float, ...] | None = None,
) -> float | None:
    """ε of ``steps`` compositions of the (Poisson-subsampled, rate ``sample_rate``) Gaussian
    mechanism with noise multiplier z, at ``delta``: Opacus's ``RDPAccountant`` (its default RDP
    orders, or ``alphas``) or ``PRVAccountant`` (eps_error 0.01). 0 for no step; None where the
    accountant fails or ε is infinite (PRV at negligible noise)."""
    if steps <= 0:
        return 0.0
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    with warnings.catch_warnings():  # q = 1: log(1 - q) in the PRV, largest-alpha notes in the RDP
        warnings.simplefilter("ignore")
        try:
            eps = float(acc.get_epsilon(delta=delta, **({"alphas": list(alphas)} if alphas else {})))
        except (ValueError, RuntimeError, OverflowError, FloatingPointError):
            return None
    return eps if math.isfinite(eps) else None


def solve_noise_multiplier(
    target_epsilon: float, delta: float, plans: Iterable[tuple[float, int]], accountant: str = "rdp"
) -> float:
    """The smallest z (Opacus ``get_noise_multiplier``, tolerance 0.01 in ε) such that every
    (sample rate, steps) of ``plans`` spends at most ``target_epsilon``: the max over the
    distinct plans."""
    from opacus.accountants.utils import get_noise_multiplier

    z = 0.0
    for q, steps in sorted(set(plans)):
        if steps <= 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                z = max(
                    z,
                    get_noise_multiplier(
                        target_epsilon=target_epsilon,
                        target_delta=delta,
                        sample_rate=q,
                        steps=steps,
                        accountant=accountant,
                    ),
                )
            except ValueError as exc:
                raise FedmoapError(f"dp.epsilon {target_epsilon:g}: {exc} (sample rate {q:g}, {steps} steps)") from None
    return z
