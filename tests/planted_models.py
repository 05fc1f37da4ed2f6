"""What tests/test_kit_modes.py and tests/test_kit_buffers.py plant bugs with: the built-in
MLP with one bug in it, the plugin that registers such models, and the kit's checks of them."""

import dataclasses

import numpy as np
from numba import njit

import lossbench
from lossbench.builtin.models import MODELS, mlp_reference_backward, mlp_reference_forward
from lossbench.testing import checks_for

MLP = {s.name: s for s in MODELS}["mlp"]


@njit(cache=True)
def always_training(hp):
    """``hp`` with the mode set to training: the bug of a model that ignores its mode."""
    own = hp.copy()
    own[own.shape[0] - 3] = 1.0
    return own


def training_hp(hp):
    """``always_training`` for the NumPy references."""
    own = np.array(hp, dtype=np.float64)
    own[-3] = 1.0
    return own


def mode_ignoring(name: str, **kernels):
    """The MLP named ``name`` with ``kernels`` (forward=, backward=) that ignore the mode,
    and references that ignore it the same way (so only the mode checks can tell)."""
    return dataclasses.replace(
        MLP, name=name, **kernels,
        reference_forward=lambda p, lay, hp, x: mlp_reference_forward(p, lay, training_hp(hp), x),
        reference_backward=lambda p, lay, hp, x, d: mlp_reference_backward(
            p, lay, training_hp(hp), x, d),
    )  # fmt: skip


class Planted:
    """A plugin registering ``specs`` (name -> ModelSpec), each carrying one bug named as it."""

    def __init__(self, specs: dict):
        self.specs = specs

    @lossbench.hookimpl
    def register_models(self, register):
        for spec in self.specs.values():
            register(spec)


def planted_checks(specs: dict, options: dict) -> dict:
    """The kit's checks of the planted models, by id (``model-NAME-CHECK``), with one options
    case for every one of them."""
    cases = {name: [options] for name in specs}
    return {c.id: c for c in checks_for(Planted(specs), options=cases)}
