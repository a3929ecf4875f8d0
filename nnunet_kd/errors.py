"""User-facing errors.

Anything raised as :class:`NnunetKDError` is a problem with the user's input or set-up. The CLI prints it as
one line (``nnunet-kd: error: ...``) and exits non-zero, without a traceback. Messages must name the case
and file involved wherever there is one.
"""

from __future__ import annotations


class NnunetKDError(Exception):
    """An error caused by bad input or configuration, meant to be read by a person."""


class InputDataError(NnunetKDError):
    """A file or case of the input data is missing, unreadable or inconsistent."""


class ConfigurationError(NnunetKDError):
    """Environment variables, dataset ids, model folders or options do not fit together."""


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM, so that it unwinds like Ctrl-C.

    A subclass of KeyboardInterrupt: every ``try/except BaseException`` clean-up (temporary folders, staged
    outputs) runs for both.
    """
