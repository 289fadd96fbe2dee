"""``fedmoap mia``'s settings (fedmoap/run/mia/args.py): parsed into MiaArgs, each bad one named."""

from __future__ import annotations

import math

import pytest

from fedmoap.errors import FedmoapError
from fedmoap.run.mia.args import MiaArgs, parse_mia, problems


def test_arguments_become_the_settings():
    run_dir, args = parse_mia(["runs/a", "--shadows", "2", "--target", "largest", "--lr", "0.1"])
    assert run_dir == "runs/a" and args == MiaArgs(shadows=2, target="largest", lr=0.1)
    assert parse_mia(["runs/a"])[1] == MiaArgs()


def test_each_bad_setting_is_named():
    assert problems(MiaArgs()) == []
    assert problems(MiaArgs(shadows=0, batch_size=0)) == ["--shadows: 0 is below 1", "--batch_size: 0 is below 1"]
    assert problems(MiaArgs(lr=0.0)) == ["--lr: 0.0 is not positive"]
    assert problems(MiaArgs(lr=math.nan)) == ["--lr: nan is not a finite number"]
    with pytest.raises(FedmoapError, match="--epochs: 0 is below 1"):
        parse_mia(["runs/a", "--epochs", "0"])
    with pytest.raises(FedmoapError, match=r"^mia: .*target.*\(see `fedmoap mia --help`\)$"):
        parse_mia(["runs/a", "--target", "some"])
