"""Studies: a named grid of ``fedmoap fit`` runs (variants x splits x seeds) and its table.

:mod:`~fedmoap.run.studies.format` reads and checks a study file and plans its cells,
:mod:`~fedmoap.run.studies.grid` makes a study of a grid of overrides (``fedmoap sweep --config C
--grid ...``), :mod:`~fedmoap.run.studies.execution` runs, lists or writes them as a SLURM array, and
:mod:`~fedmoap.run.studies.table` makes the table from the cells' run directories or from the
study's record in ``evidence/``.
"""

__all__ = []
