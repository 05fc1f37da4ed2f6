"""The checks of a learning-rate schedule: its rate equals its reference at every epoch of
short and long runs (finite, never negative), each option on its own changes the rates, and in
a real run every epoch trains at the rate the schedule gives (after the warm-up), a changed
option compiling nothing."""

from __future__ import annotations

import dataclasses
import math

from lossbench.kernels import recording_compiles
from lossbench.testing._base import _each_case, _fail, not_applicable
from lossbench.testing.common import _train, _training, _values
from lossbench.training.schedules import Schedule

SPANS = (1, 5, 30)  # schedule lengths the rates are compared over
BASE_LR = 0.1
RUN = {"epochs": 6, "warmup": 1}  # the real run: one warm-up epoch, then five of the schedule


def rates(spec, options, epochs: int, fn=None) -> list[float]:
    """The rates of every epoch of a schedule ``epochs`` long, from ``spec.rate`` (or ``fn``)."""
    fn = fn or spec.rate
    return [float(fn(e, epochs, BASE_LR, options)) for e in range(epochs)]


def _schedule_matches_reference(pm, group, spec, cases):
    if spec.reference is None:
        return not_applicable("it gives no reference (ScheduleSpec.reference)")

    def body(options):
        for span in SPANS:
            got, want = rates(spec, options, span), rates(spec, options, span, spec.reference)
            for e, (a, b) in enumerate(zip(got, want, strict=True)):
                if not math.isfinite(a) or a < 0:
                    _fail(f"rate gives {a!r} at epoch {e} of {span}: a learning rate must be "
                          "finite and >= 0")  # fmt: skip
                if abs(a - b) > 1e-12 * max(abs(b), 1e-300):
                    _fail(f"rate gives {a!r} at epoch {e} of {span}, the reference {b!r}")

    return lambda: _each_case(cases, body)


def _numeric_changes(spec, options) -> list[dict]:
    """One change per numeric option: 0.8x (or +1 for an int, 0.1 for a zero float), kept
    only when the spec's check accepts it."""
    changes = []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if isinstance(value, bool) or type(value) not in (int, float):
            continue
        new = value + 1 if type(value) is int else (value * 0.8 if value else 0.1)
        try:
            if spec.check is not None:
                spec.check(dataclasses.replace(options, **{f.name: new}))
        except Exception:
            continue
        changes.append({f.name: new})
    return changes


def _schedule_each_option(pm, group, spec, cases):
    if not _numeric_changes(spec, cases[0]):
        return not_applicable("it has no numeric options")

    def check():
        hp = cases[0]
        before = rates(spec, hp, SPANS[-1])
        for change in _numeric_changes(spec, hp):
            if rates(spec, dataclasses.replace(hp, **change), SPANS[-1]) == before:
                (name, new), = change.items()
                _fail(f"schedule.{name} = {new!r} gives the same rates as {getattr(hp, name)!r} "
                      f"over {SPANS[-1]} epochs: is the option read?")  # fmt: skip

    return check


def _schedule_reaches_training(pm, group, spec, cases):
    def check():
        hp = cases[0]
        overrides = [o for o in _training(pm, group, spec, hp) if not o.startswith("trainer.ep")]
        overrides += [f"trainer.epochs={RUN['epochs']}", f"trainer.warmup_epochs={RUN['warmup']}",
                      f"optimizer.lr={BASE_LR}"]  # fmt: skip
        _train_at_its_rates(pm, overrides, spec, hp)
        for change in _numeric_changes(spec, hp)[:1]:
            with recording_compiles() as compiled:
                _train_at_its_rates(pm, overrides, spec, dataclasses.replace(hp, **change))
            if compiled:
                _fail(f"changing {change} compiled {', '.join(compiled)} again: a schedule's "
                      "options must not reach compiled code")  # fmt: skip

    return check


def _train_at_its_rates(pm, overrides, spec, options) -> None:
    run = _train(pm, overrides, "schedule", _values(options))
    if run.status != "finished":
        _fail(f"{RUN['epochs']} epochs end with status {run.status!r}: {run.error}")
    expected = Schedule(spec, options, RUN["epochs"], RUN["warmup"])
    for h in run.history:
        want = expected.lr(h["epoch"], BASE_LR)
        if h["lr"] != want:
            _fail(f"epoch {h['epoch']} trained at lr {h['lr']!r}; the schedule gives {want!r} "
                  f"(warm-up {RUN['warmup']} epoch, then rate)")  # fmt: skip
