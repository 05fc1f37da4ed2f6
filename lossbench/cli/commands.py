"""The table of subcommands: ``python -m lossbench NAME ...`` for each name here, the first
word of the command line; any other first word is a run's (``lossbench.cli.run``).

Each entry is a parser builder (``lossbench.cli.parser.CommandParser``: its usage and ``--help``
come from it), the handler of the parsed arguments and a line of help. ``storage-proxy``,
``new-plugin`` and ``check`` parse their own arguments where they live (the sweep's proxy, the
plugin kit), so they get the rest of the command line as it is."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from lossbench.cli import probes, tools
from lossbench.cli.parser import CommandParser


@dataclass(frozen=True)
class Command:
    """One subcommand: ``parser()`` and ``handler(args)``, or ``handler(argv)`` when
    ``parser`` is None (the command parses its own arguments)."""

    help: str
    handler: Callable
    parser: Callable[[], CommandParser] | None = None

    def run(self, argv: list[str]) -> None:
        self.handler(argv if self.parser is None else self.parser().parse(argv))


def _storage_proxy(argv: list[str]) -> None:
    from lossbench.sweep.proxy import main as proxy  # start-up: Optuna for the proxy only

    sys.exit(proxy(argv))


def _authoring(name: str) -> Callable[[list[str]], None]:
    def handler(argv: list[str]) -> None:
        from lossbench.authoring import run  # start-up: the kit loads for these commands only

        sys.exit(run([name, *argv]))

    return handler


COMMANDS: dict[str, Command] = {
    "plugins": Command("the loaded plugins, their versions, hooks and components",
                       tools.plugins_command, tools.plugins_parser),
    "warmup": Command("compile the fused epoch and every kernel ahead of the first run",
                      tools.warmup_command, tools.warmup_parser),
    "replay": Command("send a run's (or a sweep's) spooled MLflow record to its store",
                      tools.replay_command, tools.replay_parser),
    "lr_find": Command("the learning-rate range test: a suggested lr and the command to use it",
                       probes.lr_find_command, probes.lr_find_parser),
    "explain": Command("one batch's loss computation, shown; writes nothing",
                       probes.explain_command, probes.explain_parser),
    "storage-proxy": Command("serve a sweep's study database over gRPC (lossbench.sweep.proxy)",
                             _storage_proxy),
    "new-plugin": Command("a new plugin package from the kit's templates (lossbench.authoring)",
                          _authoring("new-plugin")),
    "check": Command("the plugin kit's report on installed plugins (lossbench.authoring)",
                     _authoring("check")),
}  # fmt: skip
