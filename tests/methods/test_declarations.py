"""Methods' declarations (fedmoap/methods/declarations.py): the safe defaults, the FedAvg learner's
facts, and a configuration whose loss reads the client's class set."""

from __future__ import annotations

import dataclasses

import pytest

from fedmoap.methods import registry
from fedmoap.methods.declarations import OWN_RECORD, PROMPT_LEARNER, UNDECLARED, Declares, reads_class_set


def test_undeclared_is_the_safe_answer_to_every_question():
    assert UNDECLARED.record_loss != OWN_RECORD and UNDECLARED.keeps_records is not None
    assert UNDECLARED.server_reads == "individual" and UNDECLARED.newcomer_uploads
    with pytest.raises(dataclasses.FrozenInstanceError):
        UNDECLARED.record_loss = OWN_RECORD


def test_prompt_learners_read_their_own_record_and_are_summed():
    assert PROMPT_LEARNER == Declares(record_loss="own", keeps_records=None, server_reads="sum", newcomer_uploads=False)
    for name in ("promptfl", "fedprox", "fedper", "zeroshot"):
        assert registry()[name]().declared() == PROMPT_LEARNER, name


def test_reading_the_class_set_changes_only_what_a_records_loss_reads():
    d = reads_class_set(PROMPT_LEARNER, "the label space")
    assert d.record_loss == "the client's class set, found from all its records (the label space)"
    assert dataclasses.replace(d, record_loss=OWN_RECORD) == PROMPT_LEARNER
    assert PROMPT_LEARNER.record_loss == OWN_RECORD  # the original is untouched
