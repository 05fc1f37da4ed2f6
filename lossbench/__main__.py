import sys

try:
    from lossbench.cli import entry
except KeyboardInterrupt:  # Ctrl-C while the command is still importing
    print("lossbench: interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    entry()
