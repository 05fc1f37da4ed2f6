"""The table of subcommands: ``python -m lossbench NAME ...`` for each name here, the first
word of the command line; any other first word is a run's (``lossbench.cli.run``), unless it is
a bare word (``unknown_command``: no ``=``, not a flag, not ``~KEY``), which no run takes.

Each entry is a line of help, the handler of the parsed arguments and a parser builder
(``lossbench.cli.parser.CommandParser``: the command's usage and ``--help`` come from it). The
handlers live in ``tools`` (plugins, warmup, replay, storage-proxy), ``probes`` (lr_find,
explain) and ``kit`` (new-plugin, check)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from lossbench.cli import kit, probes, tools
from lossbench.cli.parser import CommandParser
from lossbench.errors import LossbenchError


@dataclass(frozen=True)
class Command:
    """One subcommand: ``handler(parser().parse(argv))``."""

    help: str
    handler: Callable
    parser: Callable[[], CommandParser]

    def run(self, argv: list[str]) -> None:
        self.handler(self.parser().parse(argv))


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
                             tools.storage_proxy_command, tools.storage_proxy_parser),
    "new-plugin": Command("a new plugin package from the kit's templates (lossbench.authoring)",
                          kit.new_plugin, kit.new_plugin_parser),
    "check": Command("the plugin kit's report on installed plugins (lossbench.authoring)",
                     kit.check, kit.check_parser),
}  # fmt: skip


def unknown_command(word: str) -> LossbenchError | None:
    """The mistake in ``word``, the first of a command line that is not a subcommand: a bare
    word (no ``=``, not a flag ``-x``/``--x``, not ``+KEY=``/``~KEY``) is none of Hydra's
    overrides, so it is taken for a mistyped subcommand and named with the closest one; None
    for anything a run takes (``loss=bce``, ``+x=1``, ``~x``, ``hydra/launcher=basic``, ``-m``,
    ``--cfg job``, ``--help``), which Hydra parses."""
    if not word or "=" in word or word.startswith(("-", "+", "~")):
        return None
    close = difflib.get_close_matches(word, list(COMMANDS), n=1)
    guess = f" Did you mean {close[0]!r}?" if close else ""
    first = f"python -m lossbench {close[0]} ..." if close else "put one of those first"
    return LossbenchError(
        f"unknown command {word!r}.{guess} Choices: {', '.join(COMMANDS)}. Fix: {first}; or, "
        "for a run, make every word an override KEY=VALUE (e.g. optimizer.lr=0.01) or one of "
        "Hydra's flags (--multirun, --cfg job, ...: python -m lossbench --help)."
    )
