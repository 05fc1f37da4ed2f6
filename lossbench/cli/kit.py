"""The subcommands for plugin authors (``lossbench.authoring``): ``new-plugin`` (a plugin
package that installs and passes as generated) and ``check`` (the conformance kit against
installed plugins), parsed here and run there; the kit loads for these commands only."""

from __future__ import annotations

import argparse
import sys

from lossbench.cli.parser import CommandParser
from lossbench.errors import LossbenchError


def new_plugin_parser() -> CommandParser:
    parser = CommandParser("new-plugin", "Write a plugin package that installs and passes as "
                           "generated: lossbench-NAME/ with one working component of the kind, "
                           "its entry point, the kit's test and golden values.",
                           plugins=False)  # fmt: skip
    parser.add_argument("name", nargs="?", metavar="NAME", help="the component's name")
    parser.add_argument("--kind", default="loss", metavar="loss|optimizer|model|dataset",
                        help="the kind of component (default loss)")  # fmt: skip
    parser.add_argument("--dir", metavar="DIR", help="where to write it (default: here)")
    return parser


def new_plugin(args) -> None:
    """``python -m lossbench new-plugin NAME [--kind KIND] [--dir DIR]``."""
    if args.name is None or args.name.startswith("-"):
        raise LossbenchError(
            "new-plugin takes one NAME, the component's name. Fix: pass it, e.g. python -m "
            f"lossbench new-plugin my_loss. {new_plugin_parser().usage_line()}"
        )
    from lossbench.authoring import new_plugin_command  # start-up: the kit, for this command

    sys.exit(new_plugin_command(args.name, args.kind, args.dir))


def check_parser() -> CommandParser:
    parser = CommandParser("check", "The conformance kit against plugins as installed, printed "
                           "as a report: exit 0 when no check fails, 1 when one does.",
                           plugins=False)  # fmt: skip
    parser.add_argument("plugins", nargs="*", metavar="PLUGIN",
                        help="an entry-point name, a distribution, a module or a plugin file")
    parser.add_argument("--fast", action="store_true",
                        help="the kit's fast mode: float64 only, no bounds-checked compile")
    parser.add_argument("--options", metavar="JSON",
                        help='what parametrize_with_checks(options=...) takes, e.g. '
                        '\'{"focal": {"gamma": 0.5}}\'')  # fmt: skip
    parser.add_argument("--hparams", metavar="JSON", help=argparse.SUPPRESS)  # --options before
    return parser


def check(args) -> None:
    """``python -m lossbench check PLUGIN... [--fast] [--options JSON]``."""
    if not args.plugins:
        raise LossbenchError(
            "check takes plugin names. Fix: pass one or more, e.g. python -m lossbench check "
            f"lossbench-focal. {check_parser().usage_line()}"
        )
    if args.hparams is not None:
        print("lossbench: note: check --hparams is now spelled --options; --hparams still "
              "works but will go in a later version", file=sys.stderr)  # fmt: skip
        args.options = args.options if args.options is not None else args.hparams
    from lossbench.authoring import check_command  # start-up: the kit, for this command

    sys.exit(check_command(args.plugins, args.fast, args.options))
