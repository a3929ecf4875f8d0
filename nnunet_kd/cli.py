"""The ``nnunet-kd`` command: argparse subcommands, each a thin call into a library module.

Bad input or a bad environment ends in one line naming the file, never a traceback: :class:`NnunetKDError` (exit 2),
``OSError`` such as a read-only or missing output folder (exit 1) and ``MemoryError`` (exit 1) are printed as
``nnunet-kd CMD: error: ...``. ``NNUNET_KD_DEBUG=1`` shows the full traceback instead. SIGTERM unwinds like Ctrl-C
(:class:`nnunet_kd.errors.Terminated`), so staged outputs are removed and nothing half-written stays (exit 143).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

from nnunet_kd import __version__
from nnunet_kd.commands import COMMAND_MODULES
from nnunet_kd.errors import NnunetKDError, Terminated


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


def os_error_line(error: OSError) -> str:
    """``Permission denied: /data/out`` -- the reason and the file(s) of an OSError, on one line."""
    if isinstance(error, FileExistsError) and error.filename is not None and os.path.isfile(error.filename):
        return f"cannot create a folder: {error.filename} is a file, not a folder"  # mkdir(parents=True) through it
    reason = error.strerror or str(error) or type(error).__name__
    files = [str(f) for f in (error.filename, error.filename2) if f is not None]
    if not files:
        return reason.splitlines()[0] if reason else type(error).__name__
    return f"{reason}: {' -> '.join(files)}"


_HANDLER_PID: list[int] = []  # the process that installed the SIGTERM handler


def _terminate(signum, frame) -> None:
    if _HANDLER_PID and os.getpid() != _HANDLER_PID[0]:
        # a forked worker (e.g. nnU-Net's multiprocessing pools) inherited the handler: end as SIGTERM would
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    from nnunet_kd.paths import debug_enabled

    parser = build_parser()
    args = parser.parse_args(argv)
    debug = debug_enabled()
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    if in_main_thread:
        _HANDLER_PID[:] = [os.getpid()]
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args._run(args) or 0)
    except NnunetKDError as e:
        if debug:
            raise
        print(f"nnunet-kd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if debug:
            raise
        print(f"nnunet-kd {args.command}: error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except MemoryError:
        if debug:
            raise
        print(f"nnunet-kd {args.command}: error: out of memory (choose smaller inputs or settings)", file=sys.stderr)
        return 1
    except Terminated:
        print(f"nnunet-kd {args.command}: terminated (SIGTERM); partial outputs removed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"nnunet-kd {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
