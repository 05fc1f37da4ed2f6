"""What every check shares: the error a miss raises, the ``Check`` object (a check that does not
apply is skipped with its reason), fast mode, comparisons that say by how much they miss and
name the slot that misses, and the small constants of the kit."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import sys
from collections.abc import Callable

import numpy as np

from lossbench.errors import ConfigError

DTYPES = ("float32", "float64")
FAST_ENV = "LOSSBENCH_KIT_FAST"
# a small run: two epochs of a 16-unit MLP with Adam on a few hundred rows, no files, no tracking
TRAINING = ["trainer.epochs=2", "trainer.batch_size=32", "trainer.progress=false", "seed=0"]
# the kit's own data sets (lossbench.testing.toy: NumPy only, no scikit-learn import)
TRAINING_DATA = {
    "class_index": ["data=kit_blobs"],
    "values": ["data=kit_blobs"],  # one-hot rows, as mse on class data
    "binary": ["data=kit_moons"],
}


_N_IN, _N_OUT, _ROWS = 4, 3, 5  # the small model the model checks build

_FAST: contextvars.ContextVar[bool] = contextvars.ContextVar("lossbench_kit_fast", default=False)


def fast_from_env() -> bool:
    """Whether ``LOSSBENCH_KIT_FAST`` asks for fast mode (set and not 0)."""
    return os.environ.get(FAST_ENV, "").strip() not in ("", "0", "false", "no")


def fast_mode() -> bool:
    """True while a check runs in fast mode: float64 only, kernels without numba's boundscheck
    (guard rows stay), training in float64."""
    return _FAST.get()


def dtypes() -> tuple[str, ...]:
    """The dtypes the running check compares in, float64 first (float64 only in fast mode)."""
    return ("float64",) if fast_mode() else ("float64", "float32")


@contextlib.contextmanager
def _mode(fast: bool):
    token = _FAST.set(fast)
    try:
        yield
    finally:
        _FAST.reset(token)


class ConformanceError(AssertionError):
    """A component misses a property; the message names component, plugin, property, amount."""


class CheckSkipped(Exception):
    """A check that cannot run (``Check.run``; calling the check under pytest skips the test)."""


class _Miss(Exception):
    """Raised inside a check; ``Check`` adds which component and property."""


class _Skip(Exception):
    """Raised inside a check that does not apply; ``Check`` adds which component and property."""


def _fail(message: str):
    raise _Miss(message)


def _skip(reason: str):
    raise _Skip(reason)


def not_applicable(reason: str) -> Callable[[], None]:
    """A check body for a property that does not apply: it is listed, and skipped with
    ``reason``."""
    return lambda: _skip(reason)


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
    fast: bool = dataclasses.field(default=False, compare=False)  # see fast_mode()

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
        """Run the check: ``ConformanceError`` on a miss, ``CheckSkipped`` if it cannot run or
        does not apply."""
        with _mode(self.fast):
            reason = self.requires() if self.requires is not None else None
            if reason:
                raise CheckSkipped(f"{self.subject}: {self.name} skipped: {reason}")
            self._body()

    def _body(self) -> None:
        try:
            self.function()
        except _Skip as skip:
            raise CheckSkipped(f"{self.subject}: {self.name} skipped: {skip}") from None
        except _Miss as miss:
            raise ConformanceError(f"{self.subject} fails {self.name}: {miss}") from None
        except Exception as exc:
            hint = ""
            if isinstance(exc, ConfigError) and self.group != "plugin":
                hint = (
                    " (the kit used the defaults, or the cases given; pass values that work "
                    f"with parametrize_with_checks(..., options={{{self.component!r}: {{...}}}}))"
                )
            raise ConformanceError(
                f"{self.subject} fails {self.name}: it raised {type(exc).__name__}: {exc}{hint}"
            ) from exc


# ---------------------------------------------------------------------------------------------
# comparisons with a measured miss, naming the slot that misses


Slot = Callable[[tuple[int, ...]], str]


def index_slot(name: str) -> Slot:
    """Names an index of the array ``name``: ``grad[2, 0]``."""
    return lambda i: f"{name}[{', '.join(str(k) for k in i)}]"


def state_slot(i: tuple[int, ...]) -> str:
    """Names an index of an optimizer's state rows: ``state[row 1, 75]``."""
    return f"state[row {i[0]}, {i[1]}]"


def _where(slot: Slot | None, shape, i) -> str:
    if not shape:
        return ""
    index = tuple(int(k) for k in i)
    return f" at {slot(index)}" if slot else f" at index {index}"


def _non_finite(what: str, got: np.ndarray, bad: np.ndarray, slot: Slot | None, who: str) -> str:
    nan, inf = int(np.sum(np.isnan(got) & bad)), int(np.sum(np.isinf(got) & bad))
    kinds = " and ".join(
        f"{name} in {n} of {got.size} values" for name, n in (("NaN", nan), ("inf", inf)) if n
    )
    first = np.unravel_index(int(np.argmax(bad)), got.shape) if got.shape else ()
    where = _where(slot, got.shape, first)
    return f"{what}: {who} gave {kinds}{where}, where finite values are expected"


def _factor_hint(got: np.ndarray, expected: np.ndarray) -> str:
    """Says so when ``got`` is one constant factor times ``expected`` everywhere."""
    nonzero = np.abs(expected) > 1e-12 * max(1e-300, float(np.max(np.abs(expected))))
    if int(nonzero.sum()) < 2 or np.any((np.abs(got) > 0) & ~nonzero):
        return ""
    ratio = got[nonzero] / expected[nonzero]
    r = float(np.median(ratio))
    if abs(r - 1) < 1e-3 or not np.allclose(ratio, r, rtol=1e-4, atol=0):
        return ""
    return (
        f"; everywhere {r:.4g} x the expected values: a constant factor is off (a 2 from "
        "d(x^2)/dx, the 1/N of a batch mean?)"
    )


def _compare(
    what: str, got, expected, rtol: float, atol: float, *, slot: Slot | None = None,
    who: str = "it", allowed: np.ndarray | None = None, rule: str = "",
) -> None:  # fmt: skip
    """A miss when ``got`` is not within ``atol + rtol |expected|`` of ``expected`` (or within
    ``allowed``, an array, described by ``rule``), naming the worst slot and the amount."""
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        _fail(f"{what}: shape {got.shape}, expected {expected.shape}")
    broken = ~np.isfinite(got) & np.isfinite(expected)
    if broken.any():
        _fail(_non_finite(what, got, broken, slot, who))
    err = np.abs(got - expected)
    times, given = "", allowed is not None
    if not given:
        allowed, rule = atol + rtol * np.abs(expected), f"{atol:.0e} + {rtol:.0e} x |expected|"
    bad = ~(err <= allowed)  # NaN counts as a miss
    if bad.any():
        excess = np.where(bad, np.nan_to_num(err - allowed, nan=np.inf), -np.inf)
        i = np.unravel_index(int(np.argmax(excess)), got.shape) if got.shape else ()
        if given:  # a rule of the caller's: say how far beyond it the worst miss is
            worst = float(np.max(np.where(bad, err / np.maximum(allowed, 1e-300), 0)))
            times = f"; the worst miss is {worst:.3g}x that" if worst >= 10 else ""
        _fail(
            f"{what} differ by up to {np.nanmax(np.where(bad, err, 0)):.3g} in {int(bad.sum())} "
            f"of {bad.size} values{_where(slot, got.shape, i)}: {got[i]:.10g} vs "
            f"{expected[i]:.10g} (allowed {rule}{times})" + _factor_hint(got, expected)
        )


def _unchanged(what: str, before: np.ndarray, after: np.ndarray, when: str = "") -> None:
    if not np.array_equal(before, after, equal_nan=True):
        diff = np.abs(np.asarray(after, np.float64) - np.asarray(before, np.float64))
        changed = int(np.sum(~((before == after) | (np.isnan(before) & np.isnan(after)))))
        _fail(
            f"it modifies its input {what}{when} ({changed} of {before.size} values, by up to "
            f"{np.nanmax(diff):.3g}). Fix: write only to the output arguments."
        )


def _packed(spec, options) -> np.ndarray:
    """``hp`` as the kernels get it: float64 whatever the run's dtype."""
    return np.asarray(spec.pack(options), dtype=np.float64).reshape(-1)


def _hp_text(options) -> str:
    return f"{type(options).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(options).items())})"


def _each_case(cases, body):
    """Run ``body(hp)`` for every case, naming the case in a miss."""
    for hp in cases:
        try:
            body(hp)
        except _Miss as miss:
            if len(cases) == 1:
                raise
            _fail(f"with {_hp_text(hp)}: {miss}")


def central_difference(
    f: Callable[[], float], x: np.ndarray, eps: float = 1e-6, skip: np.ndarray | None = None
) -> np.ndarray:
    """d f / d x by central differences (f scalar, x a float64 array changed in place); the
    entries where ``skip`` is True (a model's buffers) are left 0, never perturbed."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        if skip is not None and skip.reshape(-1)[i]:
            continue
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
    defaults = spec.options()
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
