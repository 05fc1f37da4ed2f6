"""lossbench's version, a leaf module: anything may import it without importing the rest."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lossbench")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
