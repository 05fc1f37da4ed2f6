"""Search spaces in the override grammar Hydra users know from the Optuna sweeper.

``key=choice(a,b)`` or ``key=a,b``
    categorical.
``key=range(start, stop, step=1)``
    Hydra's meaning: ``stop`` is exclusive, like Python's range. The values are
    ``start, start + step, ...`` below ``stop``; Optuna gets the inclusive bounds of exactly
    those values (the old sweeper passed ``stop`` as Optuna's inclusive high: one value too
    many).
``key=interval(low, high)``
    a float range [low, high]; an int range when the config value at ``key`` is an int.
``tag(log, ...)``
    log scale for ``interval`` and for ``range`` with step 1.

Anything else is a fixed override, the same for every trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from lossbench.errors import ConfigError


@dataclass
class Param:
    key: str
    expression: str
    distribution: object  # an optuna distribution

    @property
    def discrete_values(self) -> list | None:
        """Every value, for the grid sampler; None for a continuous range."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return list(d.choices)
        if isinstance(d, IntDistribution) and not d.log:
            return list(range(d.low, d.high + 1, d.step))
        if getattr(d, "step", None) and not getattr(d, "log", False):
            n = round((d.high - d.low) / d.step)
            return [d.low + i * d.step for i in range(n + 1)]
        return None


def _range_values(start, stop, step) -> list:
    if step == 0 or (stop - start) / step <= 0:
        return []
    n = math.ceil((stop - start) / step - 1e-12)
    return [start + i * step for i in range(n)]


def to_distribution(key: str, sweep, expression: str, current=None):
    """An Optuna distribution for one parsed Hydra sweep, or a ConfigError saying why not."""
    log = "log" in (sweep.tags or set())
    unknown = set(sweep.tags or set()) - {"log"}
    fix = (
        "Fix: use choice(a,b,...), range(start, stop, step=k), interval(low, high) or "
        "tag(log, interval(low, high))."
    )
    if unknown:
        raise ConfigError(f"{key}={expression}: unknown tag(s) {sorted(unknown)}. {fix}")
    if isinstance(sweep, ChoiceSweep):
        if log:
            raise ConfigError(f"{key}={expression}: tag(log, ...) does not apply to choice. {fix}")
        choices = [c if isinstance(c, (str, int, float, bool)) or c is None else str(c)
                   for c in sweep.list]  # fmt: skip
        if not choices:
            raise ConfigError(f"{key}={expression}: an empty choice. {fix}")
        return CategoricalDistribution(choices)
    if isinstance(sweep, RangeSweep):
        values = _range_values(sweep.start, sweep.stop, sweep.step)
        if not values:
            raise ConfigError(
                f"{key}={expression} holds no values (stop is exclusive, as in Python's range). "
                f"{fix}"
            )
        ints = all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step))
        if log and sweep.step != 1:
            raise ConfigError(
                f"{key}={expression}: Optuna cannot sample a log scale with a step other than 1. "
                f"Fix: drop the step, or use tag(log, interval(low, high))."
            )
        if ints:
            return IntDistribution(values[0], values[-1], step=sweep.step, log=log)
        if log:
            raise ConfigError(f"{key}={expression}: a float range cannot be log-scaled. {fix}")
        return FloatDistribution(values[0], values[-1], step=sweep.step)
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not low < high:
            raise ConfigError(f"{key}={expression}: interval needs low < high. {fix}")
        if log and low <= 0:
            raise ConfigError(f"{key}={expression}: a log scale needs low > 0. {fix}")
        if isinstance(current, int) and not isinstance(current, bool):
            if low != int(low) or high != int(high):
                raise ConfigError(f"{key} is an integer: give interval integer bounds.")
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise ConfigError(f"{key}={expression}: Optuna cannot represent this expression. {fix}")


def parse_choices(key: str, expression: str) -> list | None:
    """The values of a ``choice(...)`` (or ``a,b``) expression; None for anything else."""
    try:
        (ov,) = OverridesParser.create().parse_overrides([f"{key}={expression}"])
    except HydraException:
        return None
    value = ov.value() if ov.is_sweep_override() else None
    return list(value.list) if isinstance(value, ChoiceSweep) else None


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """(fixed overrides, {key: sweep expression}) from command-line overrides."""
    parser = OverridesParser.create()
    fixed, sweeps = [], {}
    for text in overrides:
        try:
            (ov,) = parser.parse_overrides([text])
        except HydraException as exc:
            raise ConfigError(f"cannot parse the override {text!r}: {exc}") from None
        if ov.is_sweep_override():
            sweeps[ov.key_or_group] = text.split("=", 1)[1]
        else:
            fixed.append(text)
    return fixed, sweeps


def build_space(expressions: dict[str, str], base_cfg) -> dict[str, Param]:
    """Parse ``{key: expression}`` into Optuna distributions (keys checked against the config)."""
    parser = OverridesParser.create()
    space = {}
    for key, expression in expressions.items():
        try:
            (ov,) = parser.parse_overrides([f"{key}={expression}"])
        except HydraException as exc:
            raise ConfigError(f"cannot parse the search space {key}={expression}: {exc}") from None
        if not ov.is_sweep_override():
            raise ConfigError(
                f"{key}={expression} is a single value, not a search space. Fix: write "
                f"{key}=choice({expression},...) or pass it as a plain override."
            )
        current = OmegaConf.select(base_cfg, key, default=None)
        space[key] = Param(key, expression, to_distribution(key, ov.value(), expression, current))
    return space


def format_override(key: str, value) -> str:
    """``key=value`` in override syntax (floats exact, strings bare)."""
    if isinstance(value, float):
        return f"{key}={value!r}"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value}"


def dedupe_overrides(overrides: list[str]) -> list[str]:
    """Each key once, where it first appears, with its last value: what Hydra applies, without
    ``trainer.epochs=30 ... trainer.epochs=3`` (``+key=`` and ``key=`` set the same key)."""
    last: dict[str, str] = {}
    for text in overrides:
        last[text.partition("=")[0].lstrip("+")] = text
    seen, out = set(), []
    for text in overrides:
        key = text.partition("=")[0].lstrip("+")
        if key not in seen:
            seen.add(key)
            out.append(last[key])
    return out
