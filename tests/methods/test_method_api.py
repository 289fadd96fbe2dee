"""The method API: a conformance test over every registered method (state round-trips exactly, a
fresh client is a function of (seed, client id), the server reads only what is uploaded, a
non-participant's state is untouched by a round), and the CLI side (short names, class paths, a
method's knobs belong to it alone, help for every field)."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import yaml

from fedmoap.errors import FedmoapError
from fedmoap.federation.config import RunConfig
from fedmoap.federation.rounds import Federation
from fedmoap.methods import registry
from fedmoap.methods.base import INPUTS
from fedmoap.run.parse import fit_parser, parse_fit
from tests.worlds import fit_smoke, tiny_federation, tiny_world

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"
METHODS = registry()
SMALL = {
    "n_ctx": 4,
    "d_gating": 32,
    "heads": 4,
    "num_experts": 2,
    "vision_tokens": 2,
    "fusion_heads": 4,
    "shared_tokens": 2,
    "class_tokens": 1,
    "bottleneck": 2,
    "ft_epochs": 1,
    "depth": 2,
    "text_blocks": [1, 2],
    "vision_blocks": [1, 2],
}
"""Knob values that keep every method small on the tiny model (applied where a method has them)."""
PER_METHOD = {"promptsrc": {"vision_tokens": 2, "vision_depth": 2, "text_depth": 2}}
"""Per-method overrides of :data:`SMALL` (PromptSRC's deep prompts must fit the tiny towers)."""
NUM_CLIENTS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, the synthetic dataset split over 4 clients, every input a method can read."""
    return tiny_world(tmp_path_factory.mktemp("cache"), NUM_CLIENTS, num_views=1)


def federation(world, cls, tmp_path: Path, participation: float = 0.5, seed: int = 0) -> Federation:
    backbone, classnames, data = world
    knobs = {f.name for f in dataclasses.fields(cls)}
    method = cls(**{k: v for k, v in {**SMALL, **PER_METHOD.get(cls.name, {})}.items() if k in knobs})
    return tiny_federation(world, method, tmp_path / "clients", participation=participation, seed=seed)


def same(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: {set(a) ^ set(b)}"
        for k in a:
            same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


class Recording(dict):
    """A dict that remembers which keys were read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def items(self):
        self.read |= set(self)
        return super().items()

    def values(self):
        self.read |= set(self)
        return super().values()

    def __iter__(self):
        self.read |= set(super().keys())
        return super().__iter__()


def trained_method(cls) -> bool:
    return cls.trains


# ---------------------------------------------------------------------------- conformance
@pytest.mark.parametrize("name", list(METHODS))
def test_state_round_trips_exactly(world, tmp_path, name):
    """A client's stored state reloads to the same predictions, and ``personal_eval`` says truly
    whether that state (not only the server's eval payload) decides them."""
    fed = federation(world, METHODS[name], tmp_path, participation=1.0)
    fed.run_round(1, progress=False)
    if not METHODS[name].trains:
        assert len(fed.store) == 0
        return
    reads_client = []
    for cid in range(NUM_CLIENTS):
        stored = fed.store.get(cid)
        fed.module.load_client(cid, stored)
        same(fed.module.client_state(), stored, f"client {cid}")
        fed.module.prepare_eval(fed.server.eval_payload(cid))
        fed.module.begin_eval()
        batch = next(fed.data.test_batches(cid, 64))
        batch.pop("label")
        first = fed.module.predict(batch)
        fed.module.load_client((cid + 1) % NUM_CLIENTS, fed.store.get((cid + 1) % NUM_CLIENTS))
        fed.module.load_client(cid, stored)
        fed.module.prepare_eval(fed.server.eval_payload(cid))
        fed.module.begin_eval()
        assert torch.equal(fed.module.predict(batch), first)
        fed.module.load_client(cid, None)
        fed.module.prepare_eval(fed.server.eval_payload(cid))
        fed.module.begin_eval()
        reads_client.append(not torch.equal(fed.module.predict(batch), first))
    # personal_eval = False lets evaluation set up one model for all clients: it must hold exactly
    # when the eval payload alone decides a client's predictions (no evaluation-time adaptation)
    if fed.module.personal_eval:
        assert any(reads_client) or fed.module.eval_adaptation_epochs(1, True) > 0, (
            f"{name}: evaluation ignores the client's state; declare personal_eval = False"
        )
    else:
        assert not any(reads_client), f"{name} declares personal_eval = False but evaluation reads the client's state"
    server_state = fed.server.state_dict()
    other = federation(world, METHODS[name], tmp_path / "other")
    other.server.load_state_dict(server_state)
    same(other.server.state_dict(), server_state, "server")


@pytest.mark.parametrize("name", list(METHODS))
def test_fresh_state_is_a_function_of_seed_and_client(world, tmp_path, name):
    a = federation(world, METHODS[name], tmp_path / "a")
    b = federation(world, METHODS[name], tmp_path / "b")
    a.module.load_client(2, None)
    b.module.load_client(0, None)  # another client first: nothing may leak into client 2
    b.module.load_client(2, None)
    same(a.module.client_state(), b.module.client_state(), "fresh client 2")
    same(a.module.global_init(), b.module.global_init(), "global init")


@pytest.mark.parametrize("name", [n for n, c in METHODS.items() if c.trains])
def test_server_reads_only_what_is_uploaded(world, tmp_path, name):
    fed = federation(world, METHODS[name], tmp_path, participation=1.0)
    uploads = {}
    for cid in range(NUM_CLIENTS):
        upload, _ = fed.train_client(1, cid, fed.server.payload(cid, 1))
        uploads[cid] = Recording(upload)
    fed.server.aggregate(1, uploads, {c: fed.data.train_size(c) for c in uploads})
    for cid, upload in uploads.items():
        assert upload.read <= set(upload), f"{name}: the server read {upload.read - set(upload)}"
        if upload:
            assert upload.read, f"{name}: the server ignored client {cid}'s upload"


@pytest.mark.parametrize("name", [n for n, c in METHODS.items() if c.trains])
def test_a_round_leaves_non_participants_untouched(world, tmp_path, name):
    fed = federation(world, METHODS[name], tmp_path, participation=0.5)

    def trained(t: int) -> set[int]:
        return set(fed.method.participants(fed.schedule.participants(t), NUM_CLIENTS, t))

    t = next((t for t in range(2, 50) if trained(t - 1) - trained(t)), None)
    if t is None:
        pytest.skip(f"{name} trains every client every round: no client is idle in a round")
    for r in range(1, t):
        fed.run_round(r, progress=False)
    idle = sorted(c for c in range(NUM_CLIENTS) if c in fed.store and c not in trained(t))
    assert idle
    before = {c: fed.store.get(c) for c in idle}
    fed.run_round(t, progress=False)
    for c in idle:
        same(fed.store.get(c), before[c], f"idle client {c}")


@pytest.mark.parametrize("name", list(METHODS))
def test_method_declarations(name):
    cls = METHODS[name]
    assert cls.inputs <= INPUTS and cls.inputs
    assert cls().required_inputs() <= INPUTS
    assert cls.__doc__ and cls.__doc__.strip()
    for f in dataclasses.fields(cls):
        assert f.name.isidentifier()


@pytest.mark.parametrize("name", [n for n, c in METHODS.items() if c.trains])
def test_shared_parameters_are_stored_parameters_with_a_server_start(world, tmp_path, name):
    """What a client shares is a registered parameter (so the store keeps it) of the shape the
    server starts it with (its ``global_init`` entry)."""
    fed = federation(world, METHODS[name], tmp_path)
    module = fed.module
    module.load_client(0, None)
    registered = {id(p) for p in module.parameters()}
    init = module.global_init()
    for key, p in module.shared_parameters().items():
        assert id(p) in registered, f"{name}: shared {key!r} is not a parameter of the module"
        assert key in init and init[key].shape == p.shape, f"{name}: no initial value for {key!r}"


# ---------------------------------------------------------------------------- the CLI side
def test_short_name_and_knobs_on_the_command_line():
    cfg, _, _ = parse_fit(["fit", "--method", "pfedmoap", "--method.lam", "0.3"])
    assert type(cfg.method).__name__ == "PFedMoAP" and cfg.method.lam == 0.3
    cfg, _, _ = parse_fit(["fit", "--config", str(SMOKE), "--method", "promptfl"])
    assert type(cfg.method).__name__ == "PromptFL" and cfg.method.n_ctx == 4  # set: carried over
    cfg, _, _ = parse_fit(["fit", "--config", str(SMOKE), "--method", "zeroshot"])
    assert cfg.method.prompt == "a photo of a {}."  # not set: own default


def test_another_methods_knob_is_rejected_with_its_name():
    with pytest.raises(FedmoapError, match="lam"):
        parse_fit(["fit", "--method", "promptfl", "--method.lam", "0.3"])


def test_print_config_and_config_yaml_hold_only_the_chosen_method(tmp_path, capsys):
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        parse_fit(["fit", "--method", "promptfl", "--print_config"])
    printed = yaml.safe_load(out.getvalue())
    assert printed["method"]["class_path"].endswith("PromptFL")
    assert "lam" not in printed["method"]["init_args"] and "pfedmoap" not in printed
    run_dir = fit_smoke(tmp_path / "run", "--method", "promptfl", "--fed.rounds", "1", threads=None)
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert set(stored["method"]["init_args"]) == {"n_ctx", "ctx_init", "template"}
    cfg, _, _ = parse_fit(["fit", "--config", str(run_dir / "config.yaml")])  # config.yaml reads back
    assert (
        cfg
        == parse_fit(
            [
                "fit",
                "--config",
                str(SMOKE),
                "--method",
                "promptfl",
                "--fed.rounds",
                "1",
                "--data.feature_cache",
                str(tmp_path / "cache"),
            ]
        )[0]
    )


def test_the_readme_walkthrough_method_runs_from_another_package(tmp_path, monkeypatch):
    """The README's "Adding a method" example, as a researcher's own package, by class path."""
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n# fedmoap/methods/myprox.py\n(.*?)```", readme, re.S).group(1)
    pkg = tmp_path / "mylab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "methods.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = fit_smoke(
        tmp_path / "run", "--method", "mylab.methods.MyProx", "--method.mu", "0.25", "--fed.rounds", "2", threads=None
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == "myprox" and len(results["rounds"]) == 2
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["method"]["init_args"]["mu"] == 0.25
    with pytest.raises(FedmoapError, match="method.mu"):
        from fedmoap.run.validate import validate

        validate(parse_fit(["fit", "--method", "mylab.methods.MyProx", "--method.mu", "-1"])[0])


def leaf_help(argv: list[str]) -> str:
    """What ``fedmoap fit ARGV`` prints for ``--help`` or ``--method.help``."""
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        fit_parser().parse_args(argv)
    return out.getvalue()


def documented(text: str, option: str) -> bool:
    """True if ``option``'s help entry has a description before its ``(type: ...)``."""
    match = re.search(rf"^\s+{re.escape(option)} \S+\s+(.*?)\(type:", text, re.S | re.M)
    return bool(match and match.group(1).strip())


def test_help_documents_every_leaf_field():
    text = leaf_help(["--help"])
    defaults = RunConfig()
    for section in dataclasses.fields(RunConfig):
        value = getattr(defaults, section.name)
        if section.name == "method" or not dataclasses.is_dataclass(value):
            assert documented(text, f"--{section.name}"), f"--{section.name}"
            continue
        for f in dataclasses.fields(value):
            assert documented(text, f"--{section.name}.{f.name}"), f"--{section.name}.{f.name}"
    assert documented(text, "--seed")


@pytest.mark.parametrize("name", list(METHODS))
def test_method_help_documents_every_knob(name):
    from fedmoap.run.parse import short_method_names

    text = leaf_help(short_method_names(["--method.help", name]))
    for f in dataclasses.fields(METHODS[name]):
        assert documented(text, f"--method.{f.name}") or documented(text, f"--method.init_args.{f.name}"), (
            f"{name}: --method.{f.name} has no help text"
        )
