"""The command table: ``fedmoap --help`` lists every command, and it, ``report --help`` and
``sweep --help`` import no torch; every command has a ``--help``; an unknown command is one line
and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedmoap.run.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert {"fit", "sweep", "report", "eval", "mia", "flower", "methods"} <= {c.name for c in COMMANDS}
    for command in COMMANDS:
        assert f"  {command.name}  " in text or f"  {command.name} " in text
        assert f"fedmoap {command.name} {command.arguments}" in text


@pytest.mark.parametrize("argv", [["--help"], ["report", "--help"], ["sweep", "--help"], ["methods", "--help"]])
def test_light_commands_import_no_torch(argv):
    code = (
        "import sys\nfrom fedmoap.run.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("NO TORCH"), proc.stdout[-500:] + proc.stderr[-2000:]


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_every_command_has_a_help(name, capsys):
    try:
        code = main([name, "--help"])
    except SystemExit as exc:  # a jsonargparse parser's help
        code = exc.code
    assert code == 0
    assert name in capsys.readouterr().out


def test_an_unknown_command_is_one_line_and_exit_2(capsys):
    assert main(["fitt", "--fed.rounds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'fitt'" in err[0] and "fit, sweep, report" in err[0]
    assert main([]) == 2  # the overview, but no command ran
