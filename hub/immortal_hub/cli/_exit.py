"""How a command ends when something is wrong: one line on stderr and an exit code.

0 done; 1 the command ran and the answer is no (the run failed, no such run, the run is
closed, a payload too large, ...); 2 it could not run (bad usage, NATS unreachable, no hub
has set the server up, refused: no token, a token or certificate refused, a role that may
not do it). ``--debug`` or ``IMMORTAL_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import sys
import traceback

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "exit_code", "report"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT


def exit_code(exc: BaseException) -> int | None:
    """The exit code for an error a user can act on, or None for a bug (a traceback)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if "immortal" not in sys.modules and "nats" not in sys.modules:
        return None  # neither loaded: not one of theirs
    from nats.errors import Error as NatsError

    from immortal import ImmortalError, NotSetUpError, ServerUnreachableError
    from immortal.security import AuthError

    if isinstance(exc, (ServerUnreachableError, NotSetUpError, AuthError)):
        return EXIT_USAGE  # (AuthError: no token, a refused token or certificate, a role)
    if isinstance(exc, (ImmortalError, NatsError)):
        return EXIT_FAILED
    return None


def report(exc: BaseException, *, debug: bool) -> int:
    """Print ``exc`` for a user; return the exit code (re-raise a bug's exception)."""
    code = exit_code(exc)
    if code is None:
        raise exc
    if debug:
        traceback.print_exception(exc)
    if code != EXIT_INTERRUPTED:
        print(f"error: {_message(exc)}", file=sys.stderr)
    return code


def _message(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    if type(exc).__module__.startswith("nats"):
        return f"NATS: {text.removeprefix('nats: ')}"
    return text
