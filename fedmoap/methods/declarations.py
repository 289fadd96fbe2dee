"""What a method declares about itself: the facts that decide which features it combines with.

Each method class states its :class:`Declares` in its own body (``declares = Declares(...)``);
a declaration is never inherited, so a new method that states nothing gets :data:`UNDECLARED`,
the safe answer: refused wherever a fact matters (record-level DP, DP with unseen-client
adaptation). A method whose facts depend on its knobs overrides
:meth:`~fedmoap.methods.base.Method.declared`. The refusals themselves are derived in
:mod:`fedmoap.federation.combinations`, the one source of the validator and of ``fedmoap
methods``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["OWN_RECORD", "Declares", "UNDECLARED", "reads_class_set", "PROMPT_LEARNER"]

OWN_RECORD = "own"
""":attr:`Declares.record_loss` of a method whose per-record loss reads that record only."""


@dataclass(frozen=True)
class Declares:
    """A method's facts, each with the safe answer as its default."""

    record_loss: str = "the method does not declare what a record's loss reads"
    """``"own"`` (:data:`OWN_RECORD`): the loss of one training record reads that record, the
    trained parameters and what the server sent, nothing derived from the client's other records
    (DP-SGD's per-record clipping bounds one record's influence only then); otherwise what else it
    reads, as a phrase that completes "each record's loss reads ..."."""
    keeps_records: str | None = "the method does not declare whether its client keeps training data"
    """None: what a client keeps and evaluates with comes from its training records only through
    its trained parameters (so DP-SGD covers it); otherwise what it keeps outside them (e.g. a cache
    of training features), as a phrase."""
    reveals: str | None = None
    """What else a client's upload shows the server outside the values the mechanism noises,
    computed from its trained parameters (e.g. which of its prompt groups it shares), as a phrase;
    None: nothing. ``dp.mode client_upload`` cannot hide it (refused); under ``record_sgd`` it is
    post-processing of DP-trained parameters."""
    server_reads: Literal["sum", "individual"] = "individual"
    """``sum``: the server needs only the weighted sum of the uploads (FedAvg's family: secure
    aggregation could hide each one); ``individual``: it reads each client's upload (a pool, a
    per-client aggregate)."""
    newcomer_uploads: bool = True
    """Whether a never-trained client's few-shot adaptation (``eval.modes`` unseen_clients) sends
    something of its own to the server (pFedMoAP: its adapted prompt, to find its experts)."""
    round_knobs: tuple[str, ...] = ()
    """Knobs whose value is a round number (e.g. the peak of PromptSRC's Gaussian over rounds):
    each must be null (relative to ``fed.rounds``) or a round of the run."""
    client_knobs: tuple[str, ...] = ()
    """Knobs that are dicts keyed by client id (e.g. pFedMoAP's ``experts_per_client``): each key
    must be a client of the run."""


UNDECLARED = Declares()
"""What a method that declares nothing is taken to be."""


def reads_class_set(d: Declares, how: str) -> Declares:
    """``d`` for a configuration whose records' loss reads the client's class set (e.g.
    ``label_space: own``): found from all its records, so removing a client's only record of a
    class changes every other record's loss, which record-level DP-SGD does not allow. ``how``:
    what the class set enters."""
    return replace(d, record_loss=f"the client's class set, found from all its records ({how})")


PROMPT_LEARNER = Declares(record_loss=OWN_RECORD, keeps_records=None, server_reads="sum", newcomer_uploads=False)
"""The facts of a FedAvg-style learner (PromptFL's family), for methods that share them to state."""
