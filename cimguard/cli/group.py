"""The ``cimguard`` click group: every error becomes one line and a non-zero exit."""

from __future__ import annotations

import os
import warnings
from typing import Any

import click

from cimguard import __version__
from cimguard.errors import CimguardError

#: Set to 1 to see the traceback of unexpected errors (and library warnings).
DEBUG_ENV = "CIMGUARD_DEBUG"


class CimguardGroup(click.Group):
    """Turns every error into one line on stderr and a non-zero exit (no traceback).

    Set ``CIMGUARD_DEBUG=1`` to see the traceback of unexpected errors.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Reports record the command exactly as typed, and when it started (cimguard.provenance).
        import time

        from cimguard.provenance import ARGV_KEY, STARTED_KEY

        ctx.meta[ARGV_KEY] = ["cimguard", *args]
        ctx.meta[STARTED_KEY] = time.time()
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke_with_one_line_errors(ctx)
        except click.ClickException as exc:
            # Under torchrun: every rank stops, and rank 0 prints this one line (other ranks never return).
            from cimguard.distributed import stop_all_ranks

            stop_all_ranks(exc.format_message(), exc.exit_code)
            raise

    def _invoke_with_one_line_errors(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():
                # cimguard checks its inputs itself; library warnings (numpy, torch, the unpickler)
                # must not print before the one-line error.  CIMGUARD_DEBUG shows them.
                if not os.environ.get(DEBUG_ENV):
                    warnings.simplefilter("ignore")
                return super().invoke(ctx)
        except CimguardError as exc:
            raise click.ClickException(str(exc)) from None
        except click.UsageError as exc:
            # Click's usage errors come with a usage banner over several lines; keep one.
            raise _OneLineUsageError(exc.format_message()) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OSError as exc:  # disk full, file-size limit, stdout closed: the same one line, exit 1
            if os.environ.get(DEBUG_ENV):
                raise
            from cimguard.checks import os_error_message

            raise click.ClickException(os_error_message(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the user gets one line, developers set CIMGUARD_DEBUG
            if os.environ.get(DEBUG_ENV):
                raise
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise click.ClickException(
                f"internal error: {type(exc).__name__}: {message} (set {DEBUG_ENV}=1 for the traceback)"
            ) from None


class _OneLineUsageError(click.ClickException):
    """A malformed command line: one line, and click's usual exit status 2."""

    exit_code = 2


@click.group(cls=CimguardGroup)
@click.version_option(__version__, prog_name="cimguard")
def cli() -> None:
    """Worst-case evaluation and hardening of ONNX networks on compute-in-memory accelerators."""
    from cimguard.plugins import load_errors

    for name, reason in load_errors.items():
        click.echo(f"warning: plugin {name} was not loaded ({reason})", err=True)
