"""Every command-line tool documents itself: `python -m scoresde` lists the commands, and every
flag of each command's parser has help text."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scoresde.__main__ import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def parser_of(command: str) -> argparse.ArgumentParser:
    """The argparse parser a command's parse_args builds, captured by parsing --help."""
    module = importlib.import_module(f"scoresde.{command}")
    captured = []
    real = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        captured.append(self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            module.parse_args(["--help"])
    finally:
        argparse.ArgumentParser.parse_args = real
    return captured[0]


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_every_flag_has_help(command):
    parser = parser_of(command)
    missing = [a.option_strings[0] for a in parser._actions
               if a.option_strings and not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, f"{command}: flags without help: {missing}"


def test_python_m_scoresde_lists_the_commands():
    r = subprocess.run([sys.executable, "-m", "scoresde"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    for command in ("train", "sample", "evaluate"):
        line = next(line for line in r.stdout.splitlines() if line.strip().startswith(command + " "))
        assert len(line.split()) > 3  # the name and a description
        assert importlib.util.find_spec(f"scoresde.{command}") is not None
    assert set(COMMANDS) == {"train", "sample", "evaluate"}
