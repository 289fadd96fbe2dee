"""Former path of :mod:`fedmoap.run.report`, kept because it is public: the notebooks taught
``from fedmoap import report`` (``report.load_runs``, ``summarize``, ``render``, ``columns``,
``METRICS``)."""

from fedmoap.run.report import (  # noqa: F401
    METRICS,
    columns,
    load_runs,
    read_results,
    read_run,
    render,
    summarize,
)
