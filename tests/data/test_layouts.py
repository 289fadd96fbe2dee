"""The reference code's on-disk layouts (fedmoap/data/layouts.py) on tiny copies of their schema:
what CoOp's split files and FedBN's pickles read as, and each mismatch one line naming the culprit."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from datasets import Image

from fedmoap.config.sections import DataArgs
from fedmoap.data.layouts import FEDBN
from fedmoap.data.sources import load_source
from tests.worlds import COOP_PER_CLASS, build_coop, build_fedbn, coop_case, one_line_error


def test_coop_layout_reads_coops_names_and_splits(tmp_path):
    base = build_coop(tmp_path, "caltech-101")
    for test_split in ("test", "val"):
        data = load_source(DataArgs(source=f"coop:{base}", test_split=test_split))
        assert data.classnames[:6] == ["face", "leopard", "motorbike", "accordion", "airplane", "anchor"]
        assert (len(data.train), len(data.test)) == (24, 12 * COOP_PER_CLASS[test_split])
        assert data.train.features["image"] == Image() and data.train[0]["image"].size == (8, 8)
    by_file = load_source(DataArgs(source=f"coop:{base / 'split_zhou_Caltech101.json'}"))
    assert by_file.train_id == data.train_id
    moved = tmp_path / "elsewhere"
    base.rename(moved)  # the same files elsewhere keep their id (and so their cached features)
    assert load_source(DataArgs(source=f"coop:{moved}")).train_id == data.train_id


@pytest.mark.parametrize("kind", sorted(FEDBN))
def test_fedbn_layout_reads_sorted_names_and_domains(tmp_path, kind):
    spec = FEDBN[kind]
    data_dir = build_fedbn(tmp_path, kind)
    for where in (data_dir, data_dir / spec.folder):  # FedBN's data/ or the benchmark's folder
        data = load_source(DataArgs(source=f"{kind}:{where}", domain_column="domain"))
        assert data.classnames == sorted(c.replace("_", " ") for c in spec.classes)
        assert data.train.unique("domain") == list(spec.domains)
        assert len(data.train) == len(data.test) == len(spec.domains) * len(spec.classes)
        first = data.train.cast_column("image", Image(decode=False))[0]
        assert first["label"] == 0 and f"/{spec.domains[0]}/{spec.classes[0]}/" in first["image"]["path"]


def _fedbn_case(data: Path, case: str) -> tuple[str, str]:
    folder = data / "DomainNet"
    if case == "missing_pickle":
        (folder / "quickdraw_test.pkl").unlink()
        return f"fedbn-domainnet:{data}", "quickdraw_test.pkl"
    if case == "pickle_of_something_else":
        with open(folder / "real_train.pkl", "wb") as f:
            pickle.dump({"paths": [], "labels": []}, f)
        return f"fedbn-domainnet:{data}", "real_train.pkl"
    with open(folder / "sketch_train.pkl", "rb") as f:
        paths, labels = pickle.load(f)
    if case == "unknown_class":
        labels = labels.astype(object)
        labels[2] = "aircraft_carrier"
        culprit = "aircraft_carrier"
    else:  # missing_image
        (data / paths[4]).unlink()
        culprit = str(paths[4])
    with open(folder / "sketch_train.pkl", "wb") as f:
        pickle.dump((paths, labels), f)
    return f"fedbn-domainnet:{data}", culprit


@pytest.mark.parametrize(
    "case", ["no_split_file", "missing_val", "entry_without_name", "label_named_twice", "missing_image"]
)
def test_coop_schema_mismatch(tmp_path, case):
    source, culprit = coop_case(build_coop(tmp_path, "oxford_flowers"), case)
    one_line_error(DataArgs(source=source), culprit)


@pytest.mark.parametrize("case", ["missing_pickle", "pickle_of_something_else", "unknown_class", "missing_image"])
def test_fedbn_schema_mismatch(tmp_path, case):
    source, culprit = _fedbn_case(build_fedbn(tmp_path, "fedbn-domainnet"), case)
    one_line_error(DataArgs(source=source, domain_column="domain"), culprit)
