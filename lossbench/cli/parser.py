"""The parser of a subcommand: argparse, its usage and ``--help`` generated from the flags,
and every mistake said as lossbench says one (``lossbench: error: ... Fix: ...``, one
paragraph, exit 2), never argparse's usage line followed by an error line.

A subcommand that takes config overrides (``lr_find``, ``explain``) gets them as the positional
``OVERRIDES``, in the order given; any other word starting with ``-`` is refused by name."""

from __future__ import annotations

import argparse
import sys

from lossbench.errors import LossbenchError


def fail(exc: LossbenchError) -> None:
    """Print ``exc`` as one paragraph and exit with its code (2: bad input)."""
    print(f"lossbench: error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


class CommandParser(argparse.ArgumentParser):
    """``python -m lossbench COMMAND``'s parser; ``--plugins-dir DIR`` is every command's that
loads plugins (``plugins=True``)."""

    def __init__(self, command: str, about: str, overrides: bool = False,
                 plugins: bool = True) -> None:  # fmt: skip
        super().__init__(prog=f"python -m lossbench {command}", description=about,
                         allow_abbrev=False, exit_on_error=False)  # fmt: skip
        self.command, self.takes_overrides = command, overrides
        if plugins:
            self.add_argument("--plugins-dir", metavar="DIR",
                              help="also load the plugin files (*.py) in DIR")  # fmt: skip
        if overrides:
            self.add_argument("overrides", nargs="*", metavar="OVERRIDES",
                              help="config overrides, as a run takes them (loss=bce ...)")

    def flag(self, flag: str, kind: type, help: str, **kwargs) -> None:
        """A ``--flag VALUE`` (also ``--flag=VALUE``) converted by ``kind``, said by name when
        the value is not one."""
        self.add_argument(flag, type=self._typed(flag, kind), help=help, **kwargs)

    def choice(self, flag: str, choices: tuple[str, ...], help: str) -> None:
        """A ``--flag VALUE`` whose value is one of ``choices``, the others named when not."""

        def convert(value: str) -> str:
            if value not in choices:
                raise LossbenchError(
                    f"{self.command} {flag} {value!r} is not one of {', '.join(choices)}. Fix: "
                    f"pass one of those. {self.usage_line()}"
                )
            return value

        self.add_argument(flag, type=convert, metavar="|".join(choices), help=help)

    def usage_line(self) -> str:
        return "Usage: " + " ".join(self.format_usage().split()[1:])

    def parse(self, argv: list[str]) -> argparse.Namespace:
        """The flags of ``argv`` (``--help``: printed, exit 0); LossbenchError for a mistake."""
        try:
            if self.takes_overrides:
                args, extra = self.parse_known_intermixed_args(argv)
            else:
                args, extra = self.parse_known_args(argv)
        except argparse.ArgumentError as exc:
            raise LossbenchError(self._said(exc)) from None
        if extra:
            own = [a for a in self._actions if a.dest not in ("help", "plugins_dir")
                   and a.help != argparse.SUPPRESS]  # an old spelling kept, not shown
            options = ", ".join(a.option_strings[-1] for a in own if a.option_strings)
            then = ", then any override a run takes" if self.takes_overrides else ""
            raise LossbenchError(
                f"{self.command} does not take {extra[0]!r}; its options are "
                f"{options or '--plugins-dir'}{then}. Fix: leave it out or use one of those. "
                f"{self.usage_line()}"
            )
        return args

    def error(self, message: str):
        """What argparse finds wrong outside a flag's value: one paragraph, never its usage."""
        raise LossbenchError(f"{self.command}: {message}. Fix: see python -m lossbench "
                             f"{self.command} --help. {self.usage_line()}")  # fmt: skip

    def _said(self, exc: argparse.ArgumentError) -> str:
        flag = exc.argument_name or "an argument"
        if exc.message.startswith("expected one argument"):
            return (f"{self.command} {flag} needs a value. Fix: give it one, {flag} VALUE. "
                    f"{self.usage_line()}")  # fmt: skip
        return (f"{self.command} {flag}: {exc.message}. Fix: see python -m lossbench "
                f"{self.command} --help. {self.usage_line()}")  # fmt: skip

    def _typed(self, flag: str, kind: type):
        def convert(value: str):
            try:
                return kind(value)
            except ValueError:
                name = kind.__name__
                raise LossbenchError(
                    f"{self.command} {flag} {value!r} is not a valid {name}. Fix: pass {flag} "
                    f"and a{'n' if kind is int else ''} {name}. {self.usage_line()}"
                ) from None

        convert.__name__ = kind.__name__
        return convert
