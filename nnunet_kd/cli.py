"""The ``nnunet-kd`` command: argparse subcommands, each a thin call into a library module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from nnunet_kd import __version__
from nnunet_kd.commands import COMMAND_MODULES
from nnunet_kd.errors import NnunetKDError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-kd",
        description="nnU-Net v2 plugin for BraTS with missing modalities: data conversion, knowledge "
                    "distillation trainers, pseudo-labelling, evaluation and reports.",
    )
    parser.add_argument("--version", action="version", version=f"nnunet-kd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<subcommand>")
    sub.required = True
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(f"nnunet_kd.commands.{module_name}")
        p = sub.add_parser(module.NAME, help=module.HELP,
                           description=getattr(module, "DESCRIPTION", module.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except NnunetKDError as e:
        print(f"nnunet-kd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnunet-kd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
