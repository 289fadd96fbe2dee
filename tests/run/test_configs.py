"""Every shipped config parses and passes validation (paper configs need real weights and data
to run, so CI checks only this); bad keys and types are rejected by the parser."""

import functools
from pathlib import Path

import pytest
import yaml

from fedmoap.errors import FedmoapError
from fedmoap.run.parse import parse_fit
from fedmoap.run.validate import validate

CONFIGS = sorted(
    p for p in Path(__file__).parents[2].joinpath("configs").rglob("*.yaml") if "studies" not in p.parts
)  # studies are not fit configs (tests/run/test_studies.py)


def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert "smoke" in names
    assert {
        "table1_flowers102",
        "table1_oxford_pets",
        "table1_food101",
        "table1_caltech101",
        "table1_dtd",
        "table3_cifar10",
        "table3_cifar100",
        "table2_domainnet",
        "table4_office_caltech10",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_validates(path):
    """Alone, or a FLiP method config on FLiP's run settings, with which it is composed (its knobs
    may name rounds of FLiP's 50)."""
    base = ["--config", str(path.parents[1] / "flip_caltech101.yaml")] if path.stem.endswith("_flip") else []
    cfg, _, _ = parse_fit(["fit", *base, "--config", str(path)])
    validate(cfg)


def test_paper_settings():
    cfg, _, _ = parse_fit(["fit", "--config", "configs/paper/table3_cifar100.yaml"])
    assert (cfg.data.num_clients, cfg.fed.participation, cfg.fed.rounds) == (100, 0.1, 120)
    assert (cfg.data.partition, cfg.data.alpha, cfg.model.arch) == ("dirichlet", 0.5, "RN50")
    cfg, _, _ = parse_fit(["fit", "--config", "configs/paper/table2_domainnet.yaml"])
    assert (cfg.data.num_clients, cfg.data.partition, cfg.model.arch) == (30, "domain_dirichlet", "ViT-B-16")


def test_dotted_override_wins_over_config():
    cfg, run_dir, _ = parse_fit(["fit", "--config", "configs/smoke.yaml", "--fed.rounds", "7", "--run_dir", "x"])
    assert cfg.fed.rounds == 7 and run_dir == "x"


@pytest.mark.parametrize("args", [["--fed.roundz", "3"], ["--fed.rounds", "abc"], ["--method", "fedsomething"]])
def test_bad_arguments_raise_one_clear_error(args):
    with pytest.raises(FedmoapError) as exc:
        parse_fit(["fit", "--config", "configs/smoke.yaml", *args])
    message = str(exc.value)
    assert "\n" not in message
    assert args[0].lstrip("-").split(".")[-1] in message or args[1] in message


# ----- seed methods: pFedDC on the nine tables (ViT-B-16), PEP-FedPT's own settings -----------
PAPER_DIR = Path(__file__).parents[2] / "configs" / "paper"
NINE = sorted(PAPER_DIR.glob("table*.yaml"))


@pytest.mark.parametrize("table", NINE, ids=lambda p: p.stem)
def test_pfeddc_on_every_table_with_vit_b16(table):
    cfg, _, _ = parse_fit(
        [
            "fit",
            "--config",
            str(table),
            "--config",
            str(PAPER_DIR / "methods" / "pfeddc.yaml"),
            "--config",
            str(PAPER_DIR / "models" / "vit_b16.yaml"),
        ]
    )
    validate(cfg)
    alone, _, _ = parse_fit(["fit", "--config", str(table)])
    assert cfg.method.name == "pfeddc" and (cfg.method.n_ctx, cfg.method.vision_tokens) == (16, 8)
    assert (cfg.model.arch, cfg.model.pretrained) == ("ViT-B-16", "openai")
    assert (cfg.data, cfg.train, cfg.fed) == (alone.data, alone.train, alone.fed)
    assert len(NINE) == 9


@pytest.mark.parametrize("method", ["pepfedpt", "fedavg_vpt", "local_vpt"])
def test_pepfedpt_settings(method):
    for name, expected in (
        ("cifar100", (100, 0.05, 60, "label_uniform", 10, 40)),
        ("domainnet", (6, 1.0, 40, "domain_dirichlet", None, 50)),
    ):
        cfg, _, _ = parse_fit(
            [
                "fit",
                "--config",
                str(PAPER_DIR / "pepfedpt" / f"{name}.yaml"),
                "--config",
                str(PAPER_DIR / "methods" / f"{method}.yaml"),
            ]
        )
        validate(cfg)
        d = cfg.data
        assert (
            d.num_clients,
            cfg.fed.participation,
            cfg.fed.rounds,
            d.partition,
            d.classes_per_client,
            cfg.train.batch_size,
        ) == expected
        assert cfg.method.name == method and cfg.method.shared_tokens == 10
        assert (cfg.train.lr, cfg.train.weight_decay, cfg.model.arch) == (0.01, 1e-5, "ViT-B-16")


TABLES = sorted(Path(__file__).parents[2].joinpath("configs", "paper").glob("table*.yaml"))
METHOD_CONFIGS = sorted(Path(__file__).parents[2].joinpath("configs", "paper", "methods").glob("*.yaml"))


def test_every_table_method_has_a_paper_config():
    from fedmoap.methods import registry

    named = {yaml.safe_load(p.read_text())["method"]["class_path"] for p in METHOD_CONFIGS}
    table_methods = {
        "zeroshot",
        "coop",
        "promptfl",
        "promptfl_ft",
        "fedprox",
        "fedper",
        "fedamp",
        "pfedprompt",
        "fedotp",
        "fedpgp",
        "pfedmoap",
    }
    assert table_methods <= named <= set(registry())


@pytest.mark.parametrize("method", METHOD_CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("table", TABLES, ids=lambda p: p.stem)
def test_table_and_method_configs_compose(table, method):
    """``--config TABLE --config METHOD``: the table's data and training, the method config's
    method with exactly its knobs (none carried over from the table's pFedMoAP, e.g. lam); one
    whose knob names a round the table does not run (FLiP PromptSRC's peak at round 15) is
    refused for it, in one line naming the knob."""
    cfg, _, _ = parse_fit(["fit", "--config", str(table), "--config", str(method)])
    late = [k for k in cfg.method.declared().round_knobs if (getattr(cfg.method, k) or 0) > cfg.fed.rounds]
    if late:
        with pytest.raises(FedmoapError, match=f"method.{late[0]} .* is not a round of this run"):
            validate(cfg)
        return
    validate(cfg)
    spec = yaml.safe_load(method.read_text())["method"]
    assert cfg.method.name == spec["class_path"]
    for knob, value in (spec.get("init_args") or {}).items():
        assert getattr(cfg.method, knob) == value, (knob, getattr(cfg.method, knob), value)
    alone = _table_alone(table)
    assert (cfg.data, cfg.train, cfg.fed, cfg.model) == (alone.data, alone.train, alone.fed, alone.model)


@functools.cache
def _table_alone(table: Path):
    return parse_fit(["fit", "--config", str(table)])[0]


@pytest.mark.parametrize("method", sorted(p for p in METHOD_CONFIGS if p.stem.endswith("_flip")), ids=lambda p: p.stem)
def test_flip_protocol_composes_with_each_flip_learner(method):
    cfg, _, _ = parse_fit(["fit", "--config", str(TABLES[0].parent / "flip_caltech101.yaml"), "--config", str(method)])
    validate(cfg)
    assert cfg.train.lr_schedule == "rounds" and cfg.train.lr_rounds == cfg.fed.rounds == 50
    assert cfg.method.name == yaml.safe_load(method.read_text())["method"]["class_path"]


def test_a_method_knob_added_later_keeps_old_runs_digest():
    """fedvpt's text_depth came after fedvpt runs existed: a stored config without it, or with it
    at its default, has the old digest (the run resumes); another value is another run."""
    from fedmoap.config.digest import config_digest
    from fedmoap.federation.config import config_dict

    cfg, _, _ = parse_fit(["fit", "--config", str(TABLES[0].parents[1] / "smoke.yaml"), "--method", "fedvpt"])
    d = config_dict(cfg)
    args = d["method"]["init_args"]
    old = {**d, "method": {**d["method"], "init_args": {k: v for k, v in args.items() if k != "text_depth"}}}
    assert config_digest(old) == config_digest(d)
    assert config_digest({**d, "method": {**d["method"], "init_args": {**args, "text_depth": 2}}}) != config_digest(d)
