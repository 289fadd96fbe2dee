"""Tensors to Flower records and back (fedmoap/run/flower/messages.py): bit for bit in every dtype
and order, and only our own serialisation accepted."""

from __future__ import annotations

import pytest
import torch

from fedmoap.run.flower.messages import from_record


def test_tensors_cross_bit_for_bit_in_every_dtype_and_order():
    from fedmoap.run.flower.messages import to_record

    gen = torch.Generator().manual_seed(0)
    sent = {
        "z.last": torch.randn(3, 4, generator=gen),
        "a": torch.randn(5, generator=gen).bfloat16(),
        "h": torch.randn(2, 2, generator=gen).half(),
        "d": torch.randn(7, generator=gen, dtype=torch.float64),
        "i": torch.arange(6).reshape(2, 3),
        "b": torch.tensor([True, False]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
        "view": torch.randn(4, 6, generator=gen)[:, ::2],
    }
    got = from_record(to_record(sent))
    assert list(got) == list(sent)
    for k, t in sent.items():
        assert got[k].dtype == t.dtype and got[k].shape == t.shape and torch.equal(got[k], t), k


def test_only_our_serialisation_is_read_back():
    from flwr.app import Array, ArrayRecord

    from fedmoap.run.flower.messages import STYPE, to_record

    record = to_record({"prompt": torch.ones(2, 3)})
    assert record["prompt"].stype == STYPE and record["prompt"].shape == (2, 3)
    foreign = ArrayRecord()
    foreign["w"] = Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"\0" * 8)
    with pytest.raises(ValueError, match="array 'w': serialisation 'numpy.ndarray', not fedmoap's"):
        from_record(foreign)


def test_a_trace_saves_each_message_in_order(tmp_path, monkeypatch):
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedmoap.run.flower.app import Trace, read_trace
    from fedmoap.run.flower.messages import to_record

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # a message outside a run needs them
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    trace = Trace(tmp_path / "trace")
    content = RecordDict({"payload": to_record({"prompt": torch.ones(2)}), "config": ConfigRecord({"round": 1})})
    trace("out", Message(content, dst_node_id=7, message_type=MessageType.TRAIN, group_id="1"))
    trace("out", Message(RecordDict(), dst_node_id=7, message_type=MessageType.QUERY, group_id="0"))
    first, second = read_trace(tmp_path / "trace")
    assert (first["direction"], first["type"], first["group"]) == ("out", MessageType.TRAIN, "1")
    assert torch.equal(first["records"]["payload"]["prompt"], torch.ones(2))
    assert first["records"]["config"] == ("ConfigRecord", {"round": 1})
    assert second["type"] == MessageType.QUERY and second["records"] == {} and second["time"] >= first["time"]
