"""Every subcommand of the `nnunet-kd` CLI is registered and has --help."""

from __future__ import annotations

import importlib
import subprocess

import pytest

from conftest import BIN
from nnunet_kd.cli import build_parser, main
from nnunet_kd.commands import COMMAND_MODULES


def _names() -> list[str]:
    return [importlib.import_module(f"nnunet_kd.commands.{m}").NAME for m in COMMAND_MODULES]


def test_command_modules_are_unique_and_complete():
    assert len(set(_names())) == len(COMMAND_MODULES)
    expected = {"synth", "convert-brats", "export-brats", "select-modalities", "ext-path", "export-teacher", "demo",
                "evaluate", "report"}
    assert expected <= set(_names())


@pytest.mark.parametrize("name", _names())
def test_every_subcommand_has_help(name: str, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nnunet-kd {name}")


def test_top_level_help_lists_every_subcommand():
    text = build_parser().format_help()
    for name in _names():
        assert name in text


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, nnunet_kd.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
