"""``fedmoap mia RUN_DIR``: membership inference against a finished run, as DP-FPL (Tran et al.,
ICLR 2025) measures it, with members the target really trained on.

Shokri-style shadow models: S shadow federations of the run's config and method train on a
shadow split drawn from the images no target client trained on or is tested on
(:mod:`fedmoap.run.mia.records`); every shadow client's softmax outputs on its training samples
(in) and test samples (out) train one attack per class (:mod:`fedmoap.run.mia.attacks`: DP-FPL's
MLP and a loss-threshold baseline), which then labels the target clients' samples: members =
what each client trained on (``split.json``), non-members = its test samples, balanced per client
and class. :func:`fedmoap.run.mia.run.run_mia` does it all; ``docs/privacy.md`` explains the knobs.

This package's ``__init__`` stays free of heavy imports: the command line reads
:mod:`fedmoap.run.mia.args` before anything is built.
"""

__all__ = []
