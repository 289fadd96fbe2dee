"""Typed run configuration: one dataclass per section, each field documented where it is declared.

The CLI (``fedmoap fit``) is generated from these dataclasses by jsonargparse, so a YAML key or a
``--section.key`` override that is not declared here is rejected with its name.
The defaults are the offline default run: packaged towers, Fashion-MNIST, 5 clients with
Dirichlet(0.1) label skew, 8 shots per class, pFedMoAP, 10 rounds of 5 local epochs; where they
differ from the paper's recipe (number of clients, learning rate) the field says so, and the
paper configs in ``configs/paper/`` set the paper's values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class ModelArgs:
    """The frozen backbone."""

    arch: str = "packaged-towers"
    """``packaged-towers`` (the offline CLIP-like model assembled from packaged towers) or any
    open_clip architecture name (``RN50``, ``ViT-B-16``, ``fedmoap-tiny-vit`` for tests)."""
    pretrained: Optional[str] = None
    """open_clip weights: a tag (``openai``), an ``hf-hub:org/repo`` id, a local checkpoint path,
    or null for random weights (tests)."""
    image_size: Optional[int] = None
    """Image side for ``packaged-towers`` (default 224); open_clip models use their own size."""
    invert_images: bool = True
    """``packaged-towers`` only: invert pixel values (dark objects on a light ground)."""
    cache_dir: Optional[str] = None
    """Where weights are looked up/downloaded (open_clip, HF hub); null = the libraries' default."""


@dataclass
class DataArgs:
    """Dataset, client split and image-feature cache."""

    source: str = "fashion-mnist"
    """``synthetic`` (generated colour images, for tests), ``fashion-mnist``, a local directory
    (saved HF dataset, parquet files or an image folder) or a Hugging Face hub dataset name."""
    path: Optional[str] = None
    """Directory of the source's files where it needs one (fashion-mnist IDX files)."""
    train_split: str = "train"
    test_split: str = "test"
    image_column: str = "image"
    label_column: str = "label"
    domain_column: Optional[str] = None
    """Column naming each sample's domain, for ``partition: domain_dirichlet``."""
    classnames: Optional[list[str]] = None
    """Class names; default: the names of the dataset's ClassLabel feature."""
    num_clients: int = 5
    """Total clients (for domain_dirichlet: clients per domain x number of domains). The offline
    default uses 5 to fit in minutes on a CPU; the paper configs set theirs (10 to 100)."""
    partition: Literal["iid", "pathological", "dirichlet", "domain_dirichlet"] = "dirichlet"
    alpha: float = 0.1
    """Dirichlet concentration (dirichlet, domain_dirichlet). The offline default's 0.1 is a split
    where personalization matters on Fashion-MNIST (each client alone beats the FedAvg prompt);
    at 0.5 it does not (README, "Evidence"). The paper's CIFAR settings use 0.5."""
    classes_per_client: Optional[int] = None
    """pathological: classes per client (default: all classes spread evenly)."""
    shots: Optional[int] = 8
    """Training samples kept per class and client (k-shot); null keeps all."""
    max_test_per_client: Optional[int] = 150
    """Cap on each client's test set (random subset); null keeps all."""
    split_file: Optional[str] = None
    """A ``split.json`` written by an earlier run: reuse its client split exactly."""
    num_views: int = 0
    """Augmented views (random resized crop + flip) cached per training image; training draws
    from these plus the plain view. 0 trains on plain features only."""
    view_seed: int = 0
    """Seed of the augmented views (part of the cache key, independent of the run seed)."""
    feature_cache: Optional[str] = None
    """Image-feature cache directory; default ``~/.cache/fedmoap/features``."""
    feature_batch_size: int = 32


@dataclass
class PromptArgs:
    """Learnable text prompts (CoOp layout ``[SOS][ctx x n_ctx][class name][.][EOT]``)."""

    n_ctx: int = 16
    ctx_init: Optional[str] = None
    """Initialise the context from these words (n_ctx then = their token count); null = N(0, 0.02)."""
    template: str = "{}."
    """Text after the context; ``{}`` is the class name."""
    zeroshot_template: str = "a photo of a {}."


@dataclass
class TrainArgs:
    """Local training on each client."""

    local_epochs: int = 5
    """Local epochs per round (the paper's 5)."""
    batch_size: int = 32
    lr: float = 0.01
    """Prompt learning rate (cosine-annealed over the local epochs of each round). Paper: 0.002
    (set by the paper configs); the offline default's few CPU rounds need a larger step."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eval_batch_size: int = 512


@dataclass
class FedArgs:
    """Federation."""

    rounds: int = 10
    participation: float = 1.0
    """Fraction of clients sampled each round (at least one)."""
    keep_checkpoints: int = 2
    """Per-round checkpoints kept in ``run_dir/checkpoints`` (the newest ones)."""


@dataclass
class PFedMoAPArgs:
    """pFedMoAP (Luo et al., ICLR 2025)."""

    num_experts: int = 9
    """K non-local experts per client (nearest pool entries by L2 distance)."""
    experts_per_client: Optional[dict[int, int]] = None
    """Per-client K overrides, e.g. {3: 4}."""
    lam: float = 0.5
    """lambda of Eq. 10: weight of the local-prompt logits."""
    d_gating: int = 128
    heads: int = 8
    reduction: Literal["avg_pool", "strided"] = "avg_pool"
    attn_scale: Optional[float] = None
    """null = 1/sqrt(d_head); the reference code uses a fixed 10.0."""
    moe_similarity: Literal["cosine", "dot"] = "cosine"
    """cosine: sim(I, T_MoE) as the paper's cosine; dot: the reference code's raw dot product."""
    gating_lr: float = 0.01
    gating_init: Literal["default", "identity"] = "default"
    """Initialisation of a client's gating network (the paper does not say): ``default`` is
    PyTorch's for all four projections (as the reference code); ``identity`` starts the value and
    output projections at the identity, so an untrained gating averages the experts."""


@dataclass
class FabricArgs:
    """lightning.Fabric settings."""

    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    threads: Optional[int] = None
    """torch threads per process; null keeps torch's default. Runs compared bit for bit (e.g. 1
    vs 2 processes) need the same value."""


@dataclass
class RunConfig:
    """Everything that determines a run's results (``run_dir`` and display options excluded)."""

    method: Literal["zeroshot", "coop", "promptfl", "pfedmoap"] = "pfedmoap"
    seed: int = 0
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    prompt: PromptArgs = field(default_factory=PromptArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    fed: FedArgs = field(default_factory=FedArgs)
    pfedmoap: PFedMoAPArgs = field(default_factory=PFedMoAPArgs)
    fabric: FabricArgs = field(default_factory=FabricArgs)
