"""Command line: ``python -m lossbench NAME ...`` runs the subcommand NAME of the table in
``commands`` (plugins, warmup, replay, lr_find, explain, storage-proxy, new-plugin, check), each
parsed by a ``parser`` (argparse, lossbench's errors); their handlers live in ``tools``
(plugins, warmup, replay, storage-proxy), ``probes`` (lr_find, explain) and ``kit``
(new-plugin, check); a first word that is neither a subcommand nor any override or flag is
refused, naming the closest subcommand (``commands.unknown_command``). Any other command line
is a run's:
``python -m lossbench [OVERRIDES]`` or ``--multirun`` (an Optuna sweep, ``lossbench.sweep``)
and Hydra's own flags, as ``run`` handles them.

Plugins are loaded first (built-ins, entry points, ``--plugins-dir``), so their components are
config options before Hydra composes. Overrides are checked before Hydra creates a run
directory; a user mistake prints one paragraph and exits with code 2, never a traceback.

Exit codes: 0 finished (or stopped early by a hook), 1 diverged or failed (also: a file of
the run could not be written, or its MLflow record is incomplete), 2 bad input, 130
interrupted.
"""

from __future__ import annotations

import sys

from lossbench.cli import run
from lossbench.cli.commands import COMMANDS, unknown_command
from lossbench.cli.parser import fail
from lossbench.cli.run import RunDirGuard
from lossbench.errors import LossbenchError
from lossbench.process import exit_now
from lossbench.signals import sigterm_as_ctrl_c_unless_handled


def entry() -> None:
    """``python -m lossbench`` and the ``lossbench`` script: ``main``, then exit without the
    interpreter's teardown (``lossbench.process.exit_now``): every file of the run or sweep is
    written by then. An error that is not the user's (a traceback) leaves the usual way."""
    sigterm_as_ctrl_c_unless_handled()  # the script (__main__ sets it)
    try:
        main()
    except SystemExit as exc:
        exit_now(exc.code)
    exit_now(0)


def main(argv: list[str] | None = None) -> None:
    """The command line ``argv`` (default ``sys.argv[1:]``): a subcommand, or a run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command = COMMANDS.get(argv[0]) if argv else None
        if command is None:
            mistake = unknown_command(argv[0]) if argv else None
            if mistake is not None:  # a bare word: no run takes it, so a mistyped command
                raise mistake
            run.main(argv)
        else:
            command.run(argv[1:])
    except LossbenchError as exc:
        fail(exc)
    except KeyboardInterrupt as exc:  # before a run started (composing): nothing to keep
        how = f" by {exc.args[0]}" if exc.args else ""
        print(f"lossbench: interrupted{how} before a run started; nothing was recorded",
              file=sys.stderr)  # fmt: skip
        sys.exit(130)


__all__ = ["COMMANDS", "RunDirGuard", "entry", "main"]
