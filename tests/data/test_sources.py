"""Data sources (fedmoap/data/sources.py) read from a saved dataset: domain codes and string
labels."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import ClassLabel, Features, Image, Value

from fedmoap.config.sections import DataArgs
from fedmoap.data.sources import load_source
from fedmoap.errors import FedmoapError
from tests.worlds import PIXEL, saved_dataset


def test_domain_codes_agree_between_train_and_test(tmp_path):
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"]), "domain": Value("string")})
    train = {"image": [PIXEL] * 8, "label": [0, 1] * 4, "domain": ["clipart"] * 4 + ["painting"] * 4}
    test = {
        "image": [PIXEL] * 6,
        "label": [0, 1] * 3,
        "domain": ["clipart", "clipart", "infograph", "infograph", "painting", "painting"],
    }
    source = load_source(DataArgs(source=saved_dataset(tmp_path / "d", train, test, features), domain_column="domain"))
    names_train = np.array(train["domain"])
    names_test = np.array(test["domain"])
    for code in np.unique(source.train_domains):
        assert set(names_train[source.train_domains == code]) == set(names_test[source.test_domains == code])
    features2 = Features({"image": Image(), "label": ClassLabel(names=["a", "b"]), "domain": Value("string")})
    test2 = {"image": [PIXEL] * 2, "label": [0, 1], "domain": ["clipart"] * 2}
    with pytest.raises(FedmoapError, match="painting"):  # a training domain without test data
        load_source(DataArgs(source=saved_dataset(tmp_path / "e", train, test2, features2), domain_column="domain"))


def test_string_labels_follow_the_class_names(tmp_path):
    features = Features({"image": Image(), "label": Value("string")})
    train = {"image": [PIXEL] * 4, "label": ["dog", "cat", "dog", "bird"]}
    args = DataArgs(source=saved_dataset(tmp_path / "s", train, train, features), classnames=["cat", "dog", "bird"])
    source = load_source(args)
    assert source.classnames == ["cat", "dog", "bird"] and source.train_labels.tolist() == [1, 0, 1, 2]
    source = load_source(DataArgs(source=str(tmp_path / "s")))  # no names: the sorted strings
    assert source.classnames == ["bird", "cat", "dog"] and source.train_labels.tolist() == [2, 1, 2, 0]
