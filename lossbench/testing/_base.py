"""What every check shares: the error a miss raises, the ``Check`` object, comparisons that say
by how much they miss, and the small constants of the kit."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

import numpy as np

from lossbench.errors import ConfigError

DTYPES = ("float32", "float64")
# a small run: two epochs of a 16-unit MLP with Adam on a few hundred rows, no files, no tracking
TRAINING = ["trainer.epochs=2", "trainer.batch_size=32", "trainer.progress=false", "seed=0"]
TRAINING_DATA = {
    "class_index": ["data=blobs", "data.n_samples=320"],
    "values": ["data=blobs", "data.n_samples=320"],  # one-hot rows, as mse on class data
    "binary": ["data=moons", "data.n_samples=320"],
}


_N_IN, _N_OUT, _ROWS = 4, 3, 5  # the small model the model checks build


class ConformanceError(AssertionError):
    """A component misses a property; the message names component, plugin, property, amount."""


class CheckSkipped(Exception):
    """A check that cannot run (``Check.run``; calling the check under pytest skips the test)."""


class _Miss(Exception):
    """Raised inside a check; ``Check`` adds which component and property."""


def _fail(message: str):
    raise _Miss(message)


@dataclasses.dataclass(frozen=True)
class Check:
    """One property of one component; call it to check (raises ``ConformanceError``)."""

    group: str
    component: str
    plugin: str
    name: str
    function: Callable[[], None] = dataclasses.field(repr=False, compare=False)
    # None, or what must hold first: returns why the check cannot run (it is then skipped)
    requires: Callable[[], str | None] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    @property
    def id(self) -> str:
        return f"{self.group}-{self.component}-{self.name}"

    @property
    def subject(self) -> str:
        if self.group == "plugin":
            return f"plugin {self.plugin!r}"
        return f"{self.group} {self.component!r} from plugin {self.plugin!r}"

    def __call__(self) -> None:
        """Run the check; under pytest, a check that cannot run is a skipped test."""
        try:
            self.run()
        except CheckSkipped as exc:
            pytest = sys.modules.get("pytest")
            if pytest is None:
                raise
            pytest.skip(str(exc))

    def run(self) -> None:
        """Run the check: ``ConformanceError`` on a miss, ``CheckSkipped`` if it cannot run."""
        reason = self.requires() if self.requires is not None else None
        if reason:
            raise CheckSkipped(f"{self.subject}: {self.name} skipped: {reason}")
        try:
            self.function()
        except _Miss as miss:
            raise ConformanceError(f"{self.subject} fails {self.name}: {miss}") from None
        except Exception as exc:
            hint = ""
            if isinstance(exc, ConfigError) and self.group != "plugin":
                hint = (
                    " (the kit used the defaults, or the cases given; pass values that work "
                    f"with parametrize_with_checks(..., hparams={{{self.component!r}: {{...}}}}))"
                )
            raise ConformanceError(
                f"{self.subject} fails {self.name}: it raised {type(exc).__name__}: {exc}{hint}"
            ) from exc


# ---------------------------------------------------------------------------------------------
# comparisons with a measured miss


def _compare(what: str, got, expected, rtol: float, atol: float) -> None:
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        _fail(f"{what}: shape {got.shape}, expected {expected.shape}")
    err = np.abs(got - expected)
    allowed = atol + rtol * np.abs(expected)
    bad = ~(err <= allowed)  # NaN counts as a miss
    if bad.any():
        excess = np.where(bad, np.nan_to_num(err - allowed, nan=np.inf), -np.inf)
        i = np.unravel_index(int(np.argmax(excess)), got.shape) if got.shape else ()
        at = f" at index {tuple(int(k) for k in i)}" if got.shape else ""
        _fail(
            f"{what} differ by up to {np.nanmax(np.where(bad, err, 0)):.3g} in {int(bad.sum())} "
            f"of {bad.size} values{at}: {got[i]:.10g} vs {expected[i]:.10g} (allowed "
            f"{atol:.0e} + {rtol:.0e} x |expected|)"
        )


def _unchanged(what: str, before: np.ndarray, after: np.ndarray) -> None:
    if not np.array_equal(before, after, equal_nan=True):
        diff = np.abs(np.asarray(after, np.float64) - np.asarray(before, np.float64))
        _fail(
            f"it modifies its input {what} ({int(np.sum(before != after))} of {before.size} "
            f"values, by up to {np.nanmax(diff):.3g}). Fix: write only to the output arguments."
        )


def _packed(spec, hp) -> np.ndarray:
    """``hp`` as the kernels get it: float64 whatever the run's dtype."""
    return np.asarray(spec.pack(hp), dtype=np.float64).reshape(-1)


def _hp_text(hp) -> str:
    return f"{type(hp).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(hp).items())})"


def _each_case(cases, body):
    """Run ``body(hp)`` for every case, naming the case in a miss."""
    for hp in cases:
        try:
            body(hp)
        except _Miss as miss:
            if len(cases) == 1:
                raise
            _fail(f"with {_hp_text(hp)}: {miss}")


def central_difference(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences (f scalar, x a float64 array changed in place)."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        g[i] = (up - down) / (2 * eps)
    return grad


def option_cases(spec) -> list:
    """The component's defaults with one option changed, for each boolean option (flipped) and
    each numeric option whose default is 0 (set to 0.1, or 1 for an int), leaving out the
    changes the component's ``check`` refuses (e.g. SGD's nesterov without momentum)."""
    defaults = spec.hparams()
    cases = []
    for f in dataclasses.fields(defaults):
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            new = not value
        elif type(value) in (int, float) and value == 0:
            new = type(value)(1) if type(value) is int else 0.1
        else:
            continue
        case = dataclasses.replace(defaults, **{f.name: new})
        try:
            if getattr(spec, "check", None) is not None:
                spec.check(case)
        except ConfigError:
            continue
        cases.append(case)
    return cases


def _plain(value):
    """A dataclass default as OmegaConf gives it back."""
    return list(value) if isinstance(value, tuple) else value
