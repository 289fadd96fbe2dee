"""Former path of :mod:`fedmoap.federation.config`, kept because it is public: the docs and the
first-run notebook taught ``from fedmoap.config import config_dict`` and the config sections."""

from fedmoap.federation.config import (  # noqa: F401
    ADDED,
    NEUTRAL,
    DataArgs,
    DPArgs,
    EvalArgs,
    EvalMode,
    FabricArgs,
    FedArgs,
    ModelArgs,
    RunConfig,
    TrainArgs,
    config_dict,
    config_digest,
)
