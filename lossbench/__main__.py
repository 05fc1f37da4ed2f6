"""``python -m lossbench``: the command line (``lossbench.cli``).

SIGTERM is Ctrl-C from this module's first line on: a command terminated at any moment (still
importing, composing, warming up, or training, where ``training.fit`` takes over) exits 130 and
says so, as Ctrl-C does, never 143 without a word (``lossbench.signals``)."""

import signal
import sys

from lossbench.signals import sigterm_is_ctrl_c

signal.signal(signal.SIGTERM, sigterm_is_ctrl_c)

try:
    from lossbench.cli import entry
except KeyboardInterrupt:  # Ctrl-C or SIGTERM while the command is still importing
    print("lossbench: interrupted before the command started; nothing was recorded",
          file=sys.stderr)  # fmt: skip
    sys.exit(130)

if __name__ == "__main__":
    entry()
