"""The former public paths of modules now in ``fedmoap/run/`` and ``fedmoap/federation/``
(``fedmoap.cli``, ``fedmoap.config``, ``fedmoap.fit``, ``fedmoap.report``) give what the docs and
notebooks taught, and ``python -m fedmoap.cli`` (an older install's console script) still runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_former_paths_are_the_moved_objects():
    import fedmoap.federation.config as config
    import fedmoap.run.cli as cli
    import fedmoap.run.fit as fit_module
    import fedmoap.run.report as report_module
    from fedmoap import report
    from fedmoap.cli import main, parse_fit
    from fedmoap.config import DataArgs, RunConfig, config_dict, config_digest
    from fedmoap.fit import fit

    assert (main, parse_fit) == (cli.main, cli.parse_fit)
    assert (DataArgs, RunConfig, config_dict, config_digest) == (
        config.DataArgs,
        config.RunConfig,
        config.config_dict,
        config.config_digest,
    )
    assert fit is fit_module.fit
    assert (report.load_runs, report.summarize, report.render, report.columns, report.METRICS) == (
        report_module.load_runs,
        report_module.summarize,
        report_module.render,
        report_module.columns,
        report_module.METRICS,
    )


def test_python_m_fedmoap_cli_runs_the_command_line():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "fedmoap.cli", "fit", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "--method.help" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
