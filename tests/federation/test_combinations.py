"""Every combination correct or refused: the matrix ``fedmoap methods`` prints is the validator's
rule, cell by cell; and the invariants a supported cell must keep, per registered method (a new
method is covered without editing a list) on the tiny world:

- ``record_sgd``: removing one record leaves every other record's clipped per-record gradient
  unchanged (what DP-SGD's accounting assumes);
- ``client_upload``: every tensor that leaves a client passes the mechanism, and what leaves
  un-noised is the declared public list (set sizes, who takes part, evaluation counts);
- every optimizer step, evaluation-time training included, runs at the lr its schedule gives over
  the training that runs it;
- knobs indexed by round or client are refused outside the run.
"""

from __future__ import annotations

import dataclasses
import io
import math
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from fedmoap.config.sections import DataArgs, DPArgs, EvalArgs, FedArgs, TrainArgs
from fedmoap.errors import FedmoapError
from fedmoap.federation import combinations
from fedmoap.federation.combinations import Cell, refusals
from fedmoap.federation.config import RunConfig
from fedmoap.federation.dp_sgd import per_example_grads, private_parameters
from fedmoap.federation.rounds import InProcess
from fedmoap.methods import registry
from fedmoap.methods.optim import cosine, round_cosine
from fedmoap.run.cli import main
from fedmoap.run.validate import validate
from tests.worlds import tiny_federation, tiny_world

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
    "vision_depth": 2,
    "text_depth": 2,
}
"""Knob values that fit every method to the tiny model's 2-block towers (where it has them)."""


def small(name: str, **knobs):
    cls = METHODS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    chosen = {k: v for k, v in SMALL.items() if k in fields}
    for depth in ("vision_depth", "text_depth"):  # lowered only where the method's default is deeper
        if depth in chosen and not fields[depth].default > 2:
            del chosen[depth]
    return cls(**{**chosen, **knobs})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT and the synthetic dataset over 3 clients, one augmented view."""
    return tiny_world(tmp_path_factory.mktemp("cache"), 3, num_views=1)


def supported(name: str, cell: Cell) -> bool:
    return not refusals(METHODS[name](), cell)


# ------------------------------------------------------------------ the matrix is the validator
def config_for(method, dp: str, mode: str, schedule: str) -> RunConfig:
    """A config that sits in the cell and passes every check that is not about the method."""
    eval_args = {"modes": ["local"] if mode == "local" else ["local", mode]}
    data = {}
    if mode in ("xdomain", "lodo", "xdataset"):
        data["domain_column"] = "domain"
        eval_args["target_domains" if mode == "lodo" else "source_domains"] = ["0"]
    privacy = {} if dp == "off" else {"mode": dp, "clip": 1.0, "noise_multiplier": 1.0}
    train = {"lr_schedule": "rounds", "lr_rounds": 2} if schedule == "rounds" else {}
    return RunConfig(
        method=method,
        data=DataArgs(**data),
        train=TrainArgs(**train),
        fed=FedArgs(rounds=2),
        eval=EvalArgs(**eval_args),
        dp=DPArgs(**privacy),
    )


def test_the_printed_matrix_is_what_the_validator_refuses_cell_by_cell():
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["methods", "--cells"]) == 0
    header, *rows = out.getvalue().strip().split("\n")
    assert header.split("\t")[:6] == ["method", "dp", "eval", "schedule", "engine", "status"]
    assert len(rows) == len(METHODS) * 3 * 8 * 2 * 2
    refused = 0
    for row in rows:
        name, dp, mode, schedule, engine, status, why = row.split("\t")
        cfg = config_for(METHODS[name](), dp, mode, schedule)
        if status == "supported":
            validate(cfg, engine)
            continue
        refused += 1
        with pytest.raises(FedmoapError) as exc:
            validate(cfg, engine)
        assert all(reason in str(exc.value) for reason in why.split(" | ")), row
    assert 0 < refused < len(rows)


class Undeclared(type(METHODS["promptfl"]())):
    """PromptFL's subclass that states nothing: it does not inherit PromptFL's declarations."""

    name = ""


def test_a_method_that_declares_nothing_is_refused_where_a_fact_matters():
    method = Undeclared()
    assert METHODS["promptfl"]().declared().record_loss == "own"
    reasons = refusals(method, Cell(dp="record_sgd"))
    assert any("does not declare what a record's loss reads" in r for r in reasons)
    assert refusals(method, Cell(dp="client_upload", modes=("local", "unseen_clients")))
    assert not refusals(method, Cell())


@pytest.mark.parametrize("name", ["fedtpg", "fedmvp"])
def test_record_sgd_on_a_label_space_own_method_is_one_line_exit_2_and_no_run_dir(name, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["fit", "--config", str(SMOKE), "--method", name, "--dp.mode", "record_sgd", "--dp.clip", "1"]
    args += ["--dp.noise_multiplier", "1", "--run_dir", str(run_dir)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"method {name}'s per-record loss reads the client's class set" in err[0]
    assert not run_dir.exists()
    cfg = config_for(METHODS[name](label_space="all"), "record_sgd", "local", "local")
    validate(cfg)  # the label space of every record alike: nothing couples records


# ------------------------------------------------------------------ record_sgd: records independent
def clipped_grads(fed, batch: dict, keep: list[int], clip: float = 1.0) -> dict[int, torch.Tensor]:
    """Client 0 holding only the records ``keep`` of ``batch``: its state from them as a run makes
    it (the set-up pass of a method that collects statistics), then each kept record's gradient
    of the method's training loss, over every DP-trained parameter, clipped to ``clip``. Each
    record is taken on a freshly loaded client, so draws inside a step do not depend on how
    many records came before."""
    module, server = fed.module, fed.server
    rows = {k: v[keep] for k, v in batch.items()}
    module.load_client(0, None)
    module.prepare_eval(server.eval_payload(0))
    if fed.method.collects_statistics(0):
        with torch.no_grad():
            module.statistics([rows])
    state = module.client_state()
    out = {}
    for i, row in enumerate(keep):
        module.load_client(0, state)
        module.receive(server.payload(0, 1))
        one = {k: v[i : i + 1] for k, v in rows.items()}
        module.on_train_batch_start(one, 0)
        grads = per_example_grads(module, private_parameters(module), one)
        flat = torch.cat([g.flatten(1) for g in grads.values()], 1)[0].double()
        out[row] = flat * min(1.0, clip / max(float(flat.norm()), 1e-12))
    return out


def removal_moves_others(world, tmp_path, method) -> float:
    """The largest change of another record's clipped gradient when client 0's only record of
    one class is removed (the worst neighbour for a loss that reads the client's class set)."""
    fed = tiny_federation(world, method, tmp_path / "store", rounds=1)
    batch = next(iter(world[2].plain_train_batches(0, 10_000)))
    labels = batch["label"].tolist()
    target = labels[0]
    with_it = [0] + [i for i, y in enumerate(labels) if y != target]
    without = with_it[1:]
    a = clipped_grads(fed, batch, with_it)
    b = clipped_grads(fed, batch, without)
    assert any(float(a[r].abs().sum()) > 0 for r in without)  # gradients to compare, not zeros
    return max(float((a[r] - b[r]).abs().max()) for r in without)


RECORD_SGD = [n for n in METHODS if supported(n, Cell(dp="record_sgd")) and METHODS[n].trains]


@pytest.mark.parametrize("name", RECORD_SGD)
def test_under_record_sgd_removing_a_record_leaves_the_others_clipped_gradients(world, tmp_path, name):
    assert removal_moves_others(world, tmp_path, small(name)) == 0.0


@pytest.mark.parametrize("name", ["fedtpg", "fedmvp"])
def test_the_refused_label_space_own_does_couple_records(world, tmp_path, name):
    """The declaration is a fact, not caution: with its client's class set, one record's removal
    moves the others' clipped gradients."""
    assert removal_moves_others(world, tmp_path, small(name, label_space="own")) > 1e-4


# ------------------------------------------------------------------ client_upload: all through the mechanism
class Watched(InProcess):
    """The in-process transport, keeping everything that crosses it to the server."""

    def __init__(self) -> None:
        self.uploads: list[tuple[int, int, dict, dict]] = []
        self.statistics_sent: list[dict] = []
        self.counts: list[dict] = []

    def train(self, federation, t, clients, progress, stop):
        payloads = {c: {k: v.clone() for k, v in federation.server.payload(c, t).items()} for c in clients}
        out = super().train(federation, t, clients, progress, stop)
        self.uploads += [(t, c, payloads[c], up) for c, up in out[0].items()]
        return out

    def statistics(self, federation, t, clients):
        stats, refs = super().statistics(federation, t, clients)
        self.statistics_sent += list(stats.values())
        return stats, refs

    def evaluate(self, federation, clients, t, progress):
        counts = super().evaluate(federation, clients, t, progress)
        self.counts.append(counts)
        return counts


CLIENT_UPLOAD = [n for n in METHODS if supported(n, Cell(dp="client_upload"))]


@pytest.mark.parametrize("name", CLIENT_UPLOAD)
def test_under_client_upload_every_uploaded_tensor_passes_the_mechanism(world, tmp_path, name):
    """With a tiny clip S and noise z S, what a client sends differs from the reference the server
    already has (its payload's tensor, else the public initial value) by at most S(1 + 1e-6) over
    all its tensors together; the rest the server sees is the public list."""
    clip = 1e-3
    dp = DPArgs(mode="client_upload", clip=clip, noise_multiplier=1e-9)
    watched = Watched()
    fed = tiny_federation(world, small(name), tmp_path / "store", rounds=2, participation=1.0, dp=dp, transport=watched)
    weights: list[dict] = []
    aggregate = fed.server.aggregate

    def aggregate_and_keep(t, uploads, w):
        weights.append(dict(w))
        return aggregate(t, uploads, w)

    fed.server.aggregate = aggregate_and_keep
    init = fed.module.global_init()
    for t in (1, 2):
        fed.run_round(t, progress=False)
    assert not any(watched.statistics_sent)  # statistics would leave outside the mechanism
    for t, cid, payload, upload in watched.uploads:
        ref = {k: payload[k] if k in payload else init.get(k, torch.zeros_like(v)) for k, v in upload.items()}
        norm = math.sqrt(sum(float((upload[k].double() - ref[k].double()).square().sum()) for k in upload))
        assert norm <= clip * (1 + 1e-6) + 1e-7, (t, cid, norm)
    sizes = {c: world[2].train_size(c) for c in range(world[2].num_clients)}
    assert all(w == {c: sizes[c] for c in w} for w in weights)  # public: training-set sizes
    for counts in watched.counts:  # public: the simulation's evaluation counts
        assert all(isinstance(n, int) for pair in counts.values() for n in pair)


# ------------------------------------------------------------------ every step at its schedule's lr
TRAINERS = [n for n in METHODS if METHODS[n].trains]


@pytest.mark.parametrize("name", TRAINERS)
def test_every_step_runs_at_its_schedules_lr_evaluation_time_training_included(world, tmp_path, name):
    """Under ``train.lr_schedule: rounds`` (period 2) a round-2 training runs at 0.5 x the lr;
    evaluation-time training (a newcomer's adaptation, PromptFL+FT's fine-tuning) is a training
    of its own: its first step at the full lr, its lr annealed over its own epochs."""
    modes = EvalArgs(modes=["local", "unseen_clients"], unseen_fraction=0.34, adaptation_epochs=2)
    schedule = {"lr_schedule": "rounds", "lr_rounds": 2}
    fed = tiny_federation(
        world, small(name), tmp_path / "store", rounds=2, eval_args=modes, held_out=[2], local_epochs=2, train=schedule
    )
    train = fed.module.run.train
    steps: list[tuple[int, bool, int, list[float], list[float]]] = []
    seen: dict[int, int] = {}

    def record(optimizer, args, kwargs):
        m = fed.module
        first = id(optimizer) not in seen
        seen.setdefault(id(optimizer), len(seen))
        bases = [g.lr for g in m.param_groups()]
        steps.append((m.planned_round, m.planned_by_round, first, [g["lr"] for g in optimizer.param_groups], bases))

    handle = register_optimizer_step_pre_hook(record)
    try:
        for t in (1, 2):
            fed.run_round(t, progress=False)
    finally:
        handle.remove()
    assert any(not by_round for _, by_round, *_ in steps) or not fed.module.param_groups()
    for t, by_round, first, lrs, bases in steps:
        anneals = [g.anneal for g in fed.module.param_groups()]
        for lr, base, anneal in zip(lrs, bases, anneals):
            if not anneal:
                assert lr == pytest.approx(base)
            elif by_round:
                assert lr == pytest.approx(base * round_cosine(train, t)), (t, "federated")
            elif first:
                assert lr == pytest.approx(base * cosine(0, 2)), (t, "evaluation-time")
            else:
                assert lr in (pytest.approx(base * cosine(0, 2)), pytest.approx(base * cosine(1, 2)))


# ------------------------------------------------------------------ knobs indexed by round or client
@pytest.mark.parametrize("name", [n for n in METHODS if METHODS[n]().declared().round_knobs])
def test_round_knobs_are_refused_outside_the_run(name):
    for knob in METHODS[name]().declared().round_knobs:
        with pytest.raises(FedmoapError, match=f"method.{knob} 11 is not a round of this run"):
            validate(RunConfig(method=METHODS[name](**{knob: 11}), fed=FedArgs(rounds=10)))
        validate(RunConfig(method=METHODS[name](**{knob: None}), fed=FedArgs(rounds=10)))


@pytest.mark.parametrize("name", [n for n in METHODS if METHODS[n]().declared().client_knobs])
def test_client_knobs_are_refused_for_clients_not_in_the_run(name, tmp_path, capsys):
    knob = METHODS[name]().declared().client_knobs[0]
    run_dir = tmp_path / "run"
    args = ["fit", "--config", str(SMOKE), "--method", name, f"--method.{knob}", "{99: 2}", "--run_dir", str(run_dir)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"method.{knob}: clients [99] are not in this run" in err[0]
    assert not run_dir.exists()


def test_the_public_list_is_stated():
    assert any("training-set size" in p for p in combinations.PUBLIC)


# ------------------------------------------------------------------ a run in each DP mode, or a refusal
def knob_args(name: str) -> list[str]:
    method = small(name)
    defaults = METHODS[name]()
    return [
        a
        for f in dataclasses.fields(method)
        if getattr(method, f.name) != getattr(defaults, f.name)
        for a in (f"--method.{f.name}", str(getattr(method, f.name)))
    ]


DP_CELLS = [
    (name, dp)
    for name in METHODS
    for dp in ("record_sgd", "client_upload")
    if dp == "record_sgd" or not supported(name, Cell(dp=dp))  # client_upload runs above
]


@pytest.mark.parametrize("name, dp", DP_CELLS)
def test_each_method_runs_a_round_under_dp_or_is_refused_in_one_line(name, dp, tmp_path, capsys):
    """``fedmoap fit`` in the cell (dp, global and neighbor evaluation, the round schedule): one
    round, or exit 2 with one line naming the method and no run directory."""
    run_dir = tmp_path / "run"
    cell = Cell(dp=dp, modes=("local", "global", "neighbor"), schedule="rounds")
    args = ["fit", "--config", str(SMOKE), "--method", name, *knob_args(name), "--fed.rounds", "1"]
    args += [
        "--dp.mode",
        dp,
        "--dp.clip",
        "1",
        "--dp.noise_multiplier",
        "1",
        "--eval.modes",
        "[local, global, neighbor]",
    ]
    args += ["--train.lr_schedule", "rounds", "--train.lr_rounds", "1", "--run_dir", str(run_dir)]
    args += ["--data.feature_cache", str(tmp_path / "cache"), "--progress", "false", "--fabric.threads", "1"]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    if refusals(METHODS[name](), cell):
        assert code == 2 and len(err) == 1 and name in err[0] and not run_dir.exists()
    else:
        assert code == 0 and (run_dir / "results.json").exists()
