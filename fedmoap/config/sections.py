"""The sections of a run's configuration, one dataclass each, every field documented where it is
declared (the docstrings are ``fedmoap fit --help``), and each section's own range checks
(``problems()``).

The CLI (``fedmoap fit``) is generated from these dataclasses by jsonargparse, so a YAML key or a
``--section.key`` override that is not declared here is rejected with its name. The defaults are
the offline default run: packaged towers, Fashion-MNIST, 5 clients with Dirichlet(0.1) label skew,
8 shots per class, 10 rounds of 5 local epochs; where they differ from the paper's recipe (number
of clients, learning rate) the field says so, and the paper configs in ``configs/paper/`` set the
paper's values. :class:`~fedmoap.federation.config.RunConfig` assembles the sections with the
method.

Fields marked ``NEUTRAL`` do not change a run's numbers (a run may be resumed or extended with
other values, and they are left out of the config digest); fields marked ``ADDED`` came after runs
made without them (see :mod:`fedmoap.config.flags`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Iterable, Literal, Optional

from fedmoap.config.flags import ADDED, NEUTRAL

__all__ = [
    "ModelArgs",
    "DataArgs",
    "TrainArgs",
    "FedArgs",
    "PRECISIONS",
    "MAX_THREADS",
    "FabricArgs",
    "EvalMode",
    "EvalArgs",
    "DPArgs",
    "SECTIONS",
    "neutral_keys",
]


def _failed(checks: Iterable[tuple[bool, str]]) -> list[str]:
    """The message of every (holds, message) check that does not hold, in order."""
    return [message for ok, message in checks if not ok]


@dataclass
class ModelArgs:
    """The frozen backbone."""

    arch: str = "packaged-towers"
    """``packaged-towers`` (the offline CLIP-like model assembled from packaged towers:
    EfficientNet-Lite0 + MiniLM), ``packaged-vit`` (offline, a pretrained DINOv2 ViT-S/14 image
    tower that takes vision prompts, the same MiniLM text side) or any open_clip architecture name
    (``RN50``, ``ViT-B-16``; ``fedmoap-tiny-vit``/``fedmoap-tiny-rn`` for tests)."""
    pretrained: Optional[str] = None
    """open_clip weights: a tag (``openai``), an ``hf-hub:org/repo`` id, a local checkpoint path,
    or null for random weights (tests)."""
    image_size: Optional[int] = None
    """Image side for the packaged backbones (default: 224 for packaged-towers, 112 for
    packaged-vit, a multiple of 14); open_clip models use their own size."""
    invert_images: bool = True
    """Packaged backbones only: invert pixel values (dark objects on a light ground)."""
    cache_dir: Optional[str] = field(default=None, metadata=NEUTRAL)
    """Where weights are looked up/downloaded (open_clip, HF hub); null = the libraries' default."""

    def problems(self) -> list[str]:
        """This section's range checks, one message each naming its key (its types checked first)."""
        return _failed(
            [
                (self.image_size is None or self.image_size >= 1, "model.image_size must be >= 1 or null"),
                (
                    self.pretrained is None or self.pretrained.strip() != "",
                    "model.pretrained is empty: give a tag, an hf-hub: id or a checkpoint path, or null for "
                    "random weights",
                ),
            ]
        )


@dataclass
class DataArgs:
    """Dataset, client split and the caches of frozen inputs."""

    source: str = "fashion-mnist"
    """``synthetic`` (generated colour images, for tests), ``fashion-mnist``,
    ``fashion-mnist-styles`` (Fashion-MNIST in five styles, column ``domain``), a local directory
    (saved HF dataset, parquet files or an image folder), a Hugging Face hub dataset name, or a
    reference layout: ``coop:DIR`` (a CoOp dataset folder with its ``split_zhou_*.json``),
    ``fedbn-domainnet:DIR`` / ``fedbn-office:DIR`` (FedBN's ``data/`` folder with its split
    pickles); see ``fedmoap/data/layouts.py``."""
    path: Optional[str] = None
    """Directory of the source's files where it needs one (fashion-mnist IDX files)."""
    train_split: str = "train"
    """Name of the split the clients train on."""
    test_split: str = "test"
    """Name of the split the clients' test sets are drawn from (not ``train_split``)."""
    image_column: str = "image"
    """Column holding the images."""
    label_column: str = "label"
    """Column holding the integer (or ClassLabel) labels."""
    domain_column: Optional[str] = None
    """Column naming each sample's domain, for ``partition: domain_dirichlet`` / ``class_blocks``
    and the domain protocols of ``eval.modes`` (xdomain, lodo, xdataset)."""
    classnames: Optional[list[str]] = None
    """Class names; default: the names of the dataset's ClassLabel feature."""
    num_clients: int = 5
    """Total clients (for domain_dirichlet: clients per domain x number of domains). The offline
    default uses 5 to fit in minutes on a CPU; the paper configs set theirs (10 to 100)."""
    partition: Literal["iid", "pathological", "dirichlet", "domain_dirichlet", "label_uniform", "class_blocks"] = (
        "dirichlet"
    )
    """How training samples are divided among clients: ``iid``; ``pathological`` (disjoint
    classes per client); ``dirichlet`` (label skew, Dir(alpha) per class); ``domain_dirichlet``
    (Dir(alpha) within each domain of ``domain_column``); ``label_uniform`` (SGPT's
    "noniid-labeluni": ``classes_per_client`` classes each, every class shared by equally many
    clients in U(0.4, 0.6) proportions); ``class_blocks`` (FedTPG's: per domain of
    ``domain_column``, or over the whole set without one, its m classes in label order cut into
    max(1, round_half_even(m / classes_per_client)) contiguous blocks, the last taking the
    remainder, one client per block holding all of its samples; ``num_clients`` must equal the
    blocks' count)."""
    balance_cap: bool = field(default=False, metadata=ADDED)
    """dirichlet / domain_dirichlet: a client that already holds N / num_clients samples (of its
    domain) gets no share of the classes drawn after (NIID-bench's cap, used by the FedOTP
    lineage: more even client sizes); false is the plain draw (Hsu et al.)."""
    alpha: float = 0.1
    """Dirichlet concentration (dirichlet, domain_dirichlet). The offline default's 0.1 is a split
    where personalization matters on Fashion-MNIST (each client alone beats the FedAvg prompt);
    at 0.5 it does not (docs/evidence.md). The paper's CIFAR settings use 0.5."""
    classes_per_client: Optional[int] = None
    """pathological: classes per client (default: all classes spread evenly); label_uniform,
    class_blocks: classes per client (required)."""
    shots: Optional[int] = 8
    """Training samples kept per class and client (k-shot); null keeps all."""
    max_test_per_client: Optional[int] = 150
    """Cap on each client's test set (random subset); null keeps all."""
    test_follows: Literal["train", "partition"] = "train"
    """What each client's test set mirrors, class by class: ``train``, its actual training
    samples (after k-shot sampling); ``partition``, its share of the partition before k-shot
    sampling (fedmoap <= 0.1's rule: with Dirichlet + shots the test sets were far more skewed
    than the nearly balanced training sets)."""
    test_from: Literal["share", "whole"] = field(default="share", metadata=ADDED)
    """Where each client's test images come from. ``share`` (fedmoap <= 0.1's rule, kept for
    comparability): the test split is divided among the clients, no image in two test sets; each
    (domain and) class's test images go to the clients in proportion to their training counts of
    that class, then a random ``max_test_per_client`` of the client's share is kept. So a
    client's test count of class k follows its share of all clients' class-k training samples,
    not its own class mix: the two agree only where every class has equally many training
    samples over all clients (offline default, 3 seeds x 5 clients: total variation from the
    training mix up to 0.17, mean 0.13 at Dirichlet 0.1; mean 0.04 pathological). ``whole``:
    each client draws ``max_test_per_client`` images (required) from the whole test split, per
    class in its training proportions rounded by largest remainder (clients may share test
    images, as many suites do): the mix matches the training mix to within rounding (same
    runs: total variation at most 0.013), unless a class has fewer test images than its share."""
    split_file: Optional[str] = None
    """A ``split.json`` written by an earlier run: reuse its client split exactly."""
    num_views: int = 0
    """Augmented views (random resized crop + flip) cached per training image for methods that
    read cached features, pooled or per-patch tokens (FedOTP) alike: the same augmented images,
    and the same view drawn per image and epoch. Training draws from these plus the plain view;
    0 trains on plain features only. Token features cost (T x D) floats per image and view.
    (Methods that read pixels augment every step instead.)"""
    view_seed: int = 0
    """Seed of the augmented views (part of the cache key, independent of the run seed)."""
    feature_cache: Optional[str] = field(default=None, metadata=NEUTRAL)
    """Cache directory of frozen image features, token features and decoded pixels; default
    ``~/.cache/fedmoap/features``."""
    feature_batch_size: int = field(default=32, metadata=NEUTRAL)
    """Images per image-tower pass when filling the caches. Part of the feature cache's key: the
    image tower's kernels round differently at each batch size, so features (bit for bit) are a
    function of the image and this size, and every pass is padded to it."""

    def problems(self) -> list[str]:
        """This section's range and combination checks, one message each naming its key (its types
        checked first)."""
        return _failed(
            [
                (
                    self.test_from == "share" or self.max_test_per_client is not None,
                    "data.test_from whole needs data.max_test_per_client (each client's test set size)",
                ),
                (
                    not self.balance_cap or self.partition in ("dirichlet", "domain_dirichlet"),
                    f"data.balance_cap applies to dirichlet partitions, not {self.partition}",
                ),
                (self.num_clients >= 1, "data.num_clients must be >= 1"),
                (self.shots is None or self.shots >= 1, "data.shots must be >= 1 or null"),
                (self.num_views >= 0, "data.num_views must be >= 0"),
                (
                    self.max_test_per_client is None or self.max_test_per_client >= 1,
                    "data.max_test_per_client must be >= 1 or null",
                ),
                (self.alpha > 0, "data.alpha must be > 0"),
                (
                    self.classes_per_client is None or self.classes_per_client >= 1,
                    "data.classes_per_client must be >= 1 or null",
                ),
                (self.feature_batch_size >= 1, "data.feature_batch_size must be >= 1"),
                (
                    self.classnames is None or len(set(self.classnames)) == len(self.classnames),
                    "data.classnames has duplicates",
                ),
                (self.source.strip() != "", "data.source must not be empty"),
                (
                    self.test_split != self.train_split,
                    f"data.test_split {self.test_split!r} is data.train_split: clients would be tested on their "
                    "training data",
                ),
                (
                    self.partition != "domain_dirichlet" or self.domain_column,
                    "data.partition domain_dirichlet needs data.domain_column",
                ),
            ]
        )


@dataclass
class TrainArgs:
    """Local training on each client (the protocol every method shares)."""

    local_epochs: int = 5
    """Local epochs per round (the paper's 5)."""
    batch_size: int = 32
    """Training batch size."""
    lr: float = 0.01
    """Learning rate of the prompts (cosine-annealed over the local epochs of each round). Paper:
    0.002 (set by the paper configs); the offline default's few CPU rounds need a larger step."""
    lr_schedule: Literal["local", "rounds"] = field(default="local", metadata=ADDED)
    """``local``: the lr is cosine-annealed over the epochs of each local training (restarted every
    time a client trains; pFedMoAP's reference); ``rounds``: a cosine over the global rounds,
    ``lr * 0.5 (1 + cos(pi (t - 1) / lr_rounds))`` in round t, constant within the round (FedTPG,
    FedMVP, FLiP). Groups a method keeps at a constant lr (pFedMoAP's gating) stay constant."""
    lr_rounds: Optional[int] = field(default=None, metadata=ADDED)
    """``lr_schedule: rounds``: the cosine's period in rounds (required; usually ``fed.rounds``;
    rounds past it keep the last value, so an extended run continues exactly)."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """SGD weight decay."""
    optimizer_state: Optional[Literal["keep", "reset"]] = None
    """Whether a client's optimizer state (momentum) is kept from one of its local trainings to
    the next (``keep``) or started afresh every round (``reset``, plain FedAvg); null = the
    method's own default (docs/methods.md, method table)."""
    eval_batch_size: int = field(default=512, metadata=NEUTRAL)
    """Evaluation batch size."""

    def problems(self) -> list[str]:
        """This section's range and combination checks, one message each naming its key (its types
        checked first)."""
        return _failed(
            [
                (self.local_epochs >= 1, "train.local_epochs must be >= 1"),
                (self.batch_size >= 1, "train.batch_size must be >= 1"),
                (self.eval_batch_size >= 1, "train.eval_batch_size must be >= 1"),
                (self.lr > 0, "train.lr must be > 0"),
                (
                    self.lr_schedule == "local" or (self.lr_rounds is not None and self.lr_rounds >= 1),
                    "train.lr_schedule rounds needs train.lr_rounds >= 1 (the cosine's period, usually fed.rounds)",
                ),
                (
                    self.lr_schedule == "rounds" or self.lr_rounds is None,
                    "train.lr_rounds is set but train.lr_schedule is local",
                ),
                (0 <= self.momentum < 1, "train.momentum must be in [0, 1)"),
                (self.weight_decay >= 0, "train.weight_decay must be >= 0"),
            ]
        )


@dataclass
class FedArgs:
    """Federation."""

    rounds: int = field(default=10, metadata=NEUTRAL)
    """Communication rounds. Extending a finished run continues it exactly."""
    participation: float = 1.0
    """Fraction of the training clients sampled each round: max(1, fraction x N rounded half up)
    (30 x 0.25 -> 8; the reference code truncates, 7: set ``participants`` for an exact count)."""
    participants: Optional[int] = field(default=None, metadata=ADDED)
    """Exact number of training clients sampled each round (instead of ``participation``, which
    must then stay 1.0); null uses ``participation``."""
    keep_checkpoints: int = field(default=2, metadata=NEUTRAL)
    """Per-round checkpoints kept in ``run_dir/checkpoints`` (the newest ones)."""
    eval_every: int = field(default=1, metadata=NEUTRAL)
    """Evaluate every client every this many rounds; the final round is always evaluated."""

    def problems(self) -> list[str]:
        """This section's range and combination checks, one message each naming its key (its types
        checked first); ``participants`` against ``data.num_clients`` spans sections
        (:func:`fedmoap.run.validate.validate`)."""
        return _failed(
            [
                (self.rounds >= 1, "fed.rounds must be >= 1"),
                (0 < self.participation <= 1, "fed.participation must be in (0, 1]"),
                (
                    self.participants is None or self.participation == 1.0,
                    "fed.participants and fed.participation are both set (set one)",
                ),
                (self.keep_checkpoints >= 1, "fed.keep_checkpoints must be >= 1"),
                (self.eval_every >= 1, "fed.eval_every must be >= 1"),
            ]
        )


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
"""The values of ``fabric.precision`` a run accepts."""
MAX_THREADS = 1024
"""Cap on fabric.threads: a fixed number, not this machine's CPU count, so that a sweep written on
a small login node is not refused for its compute nodes."""


@dataclass
class FabricArgs:
    """lightning.Fabric settings."""

    accelerator: str = field(default="auto", metadata=NEUTRAL)
    """``cpu``, ``gpu``, ``auto`` ... (Fabric's accelerator)."""
    devices: int | str = field(default=1, metadata=NEUTRAL)
    """Processes (devices) per node."""
    num_nodes: int = field(default=1, metadata=NEUTRAL)
    """Nodes. More than 1 needs a launcher that starts the other nodes' processes (srun under SLURM,
    torchrun, jsrun, mpirun, or MASTER_ADDR and NODE_RANK set on every node); refused without one."""
    strategy: str = field(default="auto", metadata=NEUTRAL)
    """Fabric strategy: ``auto``, ``ddp`` (several processes)."""
    precision: str = "32-true"
    """``32-true`` (default, bit-reproducible), ``bf16-mixed``, ``16-mixed`` (GPU; loss scaling per
    client). ``bf16-true`` is refused: the clients' modules are not cast, so it would run in float32."""
    threads: Optional[int] = field(default=None, metadata=NEUTRAL)
    """torch threads per process (1 to 1024); null keeps torch's default. Runs compared bit for
    bit (e.g. 1 vs 2 processes) need the same value."""

    def problems(self) -> list[str]:
        """This section's range checks, one message each naming its key (its types checked first)."""
        return _failed(
            [
                (
                    # Fabric casts only modules and inputs passed through fabric.setup, which the clients'
                    # modules are not: bf16-true would silently train in float32
                    self.precision != "bf16-true",
                    "fabric.precision bf16-true is not supported (the prompt modules would stay float32); "
                    "use bf16-mixed",
                ),
                (
                    self.threads is None or 1 <= self.threads <= MAX_THREADS,
                    f"fabric.threads must be in 1..{MAX_THREADS} or null",
                ),
                (self.num_nodes >= 1, "fabric.num_nodes must be >= 1"),
                (
                    self.precision in PRECISIONS,
                    f"fabric.precision {self.precision!r} is not one of {', '.join(PRECISIONS)}",
                ),
            ]
        )


# ----- evaluation modes (fedmoap/federation/evaluation.py) ----------------------------------------
EvalMode = Literal["local", "global", "neighbor", "base2novel", "unseen_clients", "xdomain", "lodo", "xdataset"]


@dataclass
class EvalArgs:
    """Evaluation modes (docs/evaluation.md); each evaluated round reports every mode."""

    modes: list[EvalMode] = field(default_factory=lambda: ["local"])
    """``local``: each client on its own test set (always evaluated; the pFedMoAP metric);
    ``global``: each client's model on the whole test set, all class names; ``neighbor``: each
    client on the union of the other clients' test sets; ``base2novel``: the first
    ceil(base_fraction x C) classes by label index are base, the rest novel (stored in
    split.json); clients train on base classes only and are evaluated on local, base (all
    base-class test images, base names) and novel (all novel-class test images, novel names),
    with HM(base, novel) and HM(local, base, novel); ``unseen_clients``: a seeded
    ``unseen_fraction`` of the clients never trains and is evaluated without and with few-shot
    adaptation. The generalisation protocols (one per run; domains are ``data.domain_column``'s
    values): ``xdomain``, clients train on one source domain (``source_domains``), the model is
    tested on each other domain's test images, all classes; ``lodo``, clients train on every domain
    but the held-out one (``target_domains: [d]``), tested on its test images; ``xdataset``,
    clients train on the source domains' base classes (as base2novel), tested on each target
    domain's novel classes with the novel names. Each reports per target and the mean over
    targets, for the method's global component and the mean of the clients' own models.
    E.g. ``--eval.modes "[local,base2novel]"``."""
    local_label_space: Literal["all", "own"] = field(default="all", metadata=ADDED)
    """The label space of ``local``: ``all``, every class of the dataset (the pFedMoAP metric);
    ``own``, only the classes the client trains on (FedTPG's "local": the model classifies among
    them, its class names set to them; a test image of another class counts as an error, and none
    exists under the default test-set rules). Methods that cannot rename classes are refused."""
    base_fraction: float = 0.5
    """base2novel: fraction of the classes (by label index, rounded up) that are base classes
    (CoOp's convention: ceil(C/2))."""
    unseen_fraction: float = 0.2
    """unseen_clients: fraction of data.num_clients held out of all training (rounded half up,
    at least 1; seeded by the run seed, stored in split.json)."""
    adaptation_epochs: Optional[int] = None
    """unseen_clients: local epochs of few-shot adaptation of a held-out client's model on its
    own training split (never uploaded nor stored); null = train.local_epochs; 0 skips the
    adapted evaluation."""
    max_test_images: Optional[int] = None
    """Cap on the pooled test sets of global, base2novel and the domain protocols (the whole test
    set, all base-class and all novel-class test images, each target domain's): a seeded random
    subset of this many images each, stored in split.json; null keeps all."""
    source_domains: Optional[list[str]] = field(default=None, metadata=ADDED)
    """xdomain, lodo, xdataset: the domains the clients train on (xdomain: exactly one); null =
    every domain that is not a target."""
    target_domains: Optional[list[str]] = field(default=None, metadata=ADDED)
    """xdomain, lodo, xdataset: the domains tested, each separately (lodo: exactly one, the
    held-out domain); null = every domain that is not a source."""
    clients_per_round: Optional[int] = field(default=None, metadata=ADDED)
    """Training clients evaluated in an evaluated round before the last (``local``, ``global``,
    ``neighbor``, ``base2novel``): a seeded sample of this many (seed, round), so that an
    evaluation does not grow with ``data.num_clients``; its accuracies are the sample's. The
    run's last round (``fed.rounds``) evaluates every client. null evaluates every client in
    every evaluated round."""


# --- differential privacy (fedmoap/federation/privacy.py) -----------------------------------------
@dataclass
class DPArgs:
    """Differential privacy (docs/privacy.md): off, client-level noise on every
    upload, or record-level DP-SGD; epsilon is reported by Opacus's RDP and PRV accountants."""

    mode: Literal["off", "client_upload", "record_sgd"] = "off"
    """``off``; ``client_upload``: each upload's change (all uploaded tensors together) is clipped
    to L2 norm ``clip`` and Gaussian noise of std ``noise_multiplier * clip`` is added before the
    server sees it (client-level adjacency, composed over a client's uploads, no amplification);
    ``record_sgd``: DP-SGD on every locally trained parameter (gating included), per-example
    clipping to ``clip``, Poisson sampling, noise std ``noise_multiplier * clip`` (record-level)."""
    epsilon: Optional[float] = None
    """Target epsilon: solves the noise multiplier (with ``accountant``) so that the worst client
    spends at most this over the steps the planned ``fed.rounds`` take. Or set
    ``noise_multiplier``."""
    noise_multiplier: Optional[float] = None
    """z, the noise std in units of ``clip`` (std = z * clip; the alternative to ``epsilon``). It
    is the noise std over the sensitivity under ``adjacency: add_remove``; under ``replace`` the
    sensitivity is 2 * clip and the accountant sees z / 2."""
    delta: float = 1e-5
    """delta of the reported (epsilon, delta); keep it well below 1 / (records or clients)."""
    clip: Optional[float] = None
    """Clip norm: S (L2 norm of one upload's change) for ``client_upload``, C (L2 norm of one
    example's gradient over all trained parameters) for ``record_sgd``. Required: fedmoap derives
    no default from the private data."""
    accountant: Literal["rdp", "prv"] = "rdp"
    """Accountant that solves ``noise_multiplier`` from ``epsilon`` (both are reported)."""
    adjacency: Literal["add_remove", "replace"] = field(default="add_remove", metadata=ADDED)
    """Which datasets are neighbours: ``add_remove`` (one client's data, or one record, present or
    absent: zero-out; the sensitivity is the clip norm, as Opacus's accountants assume) or
    ``replace`` (one client's data, or one record, exchanged for another: the sensitivity doubles,
    so epsilon is accounted with half the noise multiplier, and a target epsilon solves twice
    the noise)."""
    preset: Optional[Literal["pfedmoap-appendix"]] = None
    """``pfedmoap-appendix``: the paper's DP setting (App. C.2: delta 0.05, epsilon 50 or 25,
    default 50); sets delta = 0.05 and prints what such a budget means."""


# --- end differential privacy --------------------------------------------------------------------


SECTIONS: dict[str, type] = {
    "model": ModelArgs,
    "data": DataArgs,
    "train": TrainArgs,
    "fed": FedArgs,
    "fabric": FabricArgs,
    "eval": EvalArgs,
    "dp": DPArgs,
}
"""A run config's sections by their key (the fields of ``RunConfig`` besides ``method`` and ``seed``)."""


def neutral_keys() -> set[tuple[str, str]]:
    """(section, key) of every field flagged neutral (it does not change a run's numbers)."""
    return {(name, f.name) for name, cls in SECTIONS.items() for f in fields(cls) if f.metadata.get("neutral")}
