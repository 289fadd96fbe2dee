"""The privacy accountant (fedmoap/federation/dp_budget.py): epsilon against published values and
the exact Gaussian composition, and the noise multiplier solved for a target epsilon."""

from __future__ import annotations

import math

import pytest

from fedmoap.federation.dp_budget import epsilon, solve_noise_multiplier


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """ε of a mu-GDP mechanism at ``delta`` (Dong, Roth, Su 2019, Cor. 2.13; Balle & Wang 2018,
    Thm. 8): δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2), solved for ε by bisection. k uploads with
    noise multiplier z (no sampling) are exactly sqrt(k)/z-GDP."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        d = phi(-mid / mu + mu / 2) - math.exp(mid) * phi(-mid / mu - mu / 2)
        lo, hi = (mid, hi) if d > delta else (lo, mid)
    return hi


def test_rdp_matches_opacus_published_example():
    """Opacus's documentation of ``compute_dp_sgd_privacy`` (opacus.ai/api/compute_dp_sgd_privacy):
    sample rate 1 %, noise multiplier 1.0, 300 steps (3 epochs), delta 1e-5, orders 2, 5, 10,
    20, 100 satisfy (2.39, 1e-5)-DP."""
    assert epsilon(1.0, 0.01, 300, 1e-5, "rdp", alphas=(2, 5, 10, 20, 100)) == pytest.approx(2.39, abs=0.005)


@pytest.mark.parametrize("z,k,delta", [(2.02, 10, 1e-5), (12.8, 10, 1e-5), (0.39, 10, 0.05)])
def test_client_level_accounting_matches_the_exact_gaussian(z, k, delta):
    """q = 1 (client_upload): the PRV accountant equals the exact composition of Gaussians (its
    eps_error is 0.01); RDP is an upper bound, a little looser."""
    exact = exact_gaussian_epsilon(math.sqrt(k) / z, delta)
    prv, rdp = epsilon(z, 1.0, k, delta, "prv"), epsilon(z, 1.0, k, delta, "rdp")
    assert prv == pytest.approx(exact, abs=0.03 + 0.002 * exact)
    assert exact - 0.01 <= rdp <= exact * 1.15 + 0.1


def test_accountant_reproduces_the_spec_table():
    """notes/spec-baselines-dp-eval.md §3.2 (computed there with Opacus 1.6): client-level, 10
    uploads, epsilon 8 at delta 1e-5 needs z = 2.02 (RDP) / 1.90 (PRV), epsilon 1 needs 12.8 /
    12.0; record-level, q = 0.1 and 500 steps at z = 1.0 gives epsilon(0.05) = 9.5 / 7.7."""
    assert epsilon(2.02, 1.0, 10, 1e-5, "rdp") == pytest.approx(8.0, abs=0.05)
    assert epsilon(1.90, 1.0, 10, 1e-5, "prv") == pytest.approx(8.0, abs=0.05)
    assert epsilon(12.8, 1.0, 10, 1e-5, "rdp") == pytest.approx(1.0, abs=0.01)
    assert epsilon(1.0, 0.1, 500, 0.05, "rdp") == pytest.approx(9.5, abs=0.05)
    assert epsilon(1.0, 0.1, 500, 0.05, "prv") == pytest.approx(7.7, abs=0.05)
    assert epsilon(1.0, 0.1, 0, 1e-5) == 0.0


@pytest.mark.parametrize(
    "accountant,plans,expect",
    [("rdp", [(1.0, 10), (1.0, 7)], 2.02), ("prv", [(1.0, 10)], 1.90), ("rdp", [(0.1, 500)], 1.64)],
)
def test_epsilon_target_solves_the_noise_multiplier(accountant, plans, expect):
    z = solve_noise_multiplier(8.0, 1e-5, plans, accountant)
    assert z == pytest.approx(expect, abs=0.01)
    spent = max(epsilon(z, q, s, 1e-5, accountant) for q, s in plans)
    assert 7.98 <= spent <= 8.0
