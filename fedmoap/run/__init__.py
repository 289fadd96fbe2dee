"""A run on top of the federation: the command line and its parser, validation, run directories
and checkpoints, ``fit``, re-evaluation, studies, sweeps and reports."""

__all__ = []
