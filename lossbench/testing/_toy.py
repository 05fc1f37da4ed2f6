"""The kit's own small data sets for ``trains_small_mlp``: seeded Gaussian blobs (three classes)
and two interleaved half-moons (two classes), in NumPy. The built-in ``blobs`` and ``moons``
import scikit-learn, about 3 s of every kit run on a 2-core machine; these take milliseconds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lossbench.data import DataOptions, Dataset
from lossbench.hookspecs import hookimpl
from lossbench.specs import DatasetSpec


@dataclass
class ToyOptions(DataOptions):
    n_samples: int = 320


def _blobs(options: ToyOptions, seed: int) -> Dataset:
    """Three Gaussian blobs (unit spread) around centers drawn from [-10, 10]^2, as
    scikit-learn's make_blobs draws them."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10.0, 10.0, size=(3, 2))
    y = rng.permutation(np.arange(options.n_samples) % 3)
    X = centers[y] + rng.normal(size=(options.n_samples, 2))
    return Dataset(X=X, y=y.astype(np.int64), task="classification", class_names=["0", "1", "2"])


def _moons(options: ToyOptions, seed: int) -> Dataset:
    """Two interleaved half circles with Gaussian noise (0.2), as make_moons draws them."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(options.n_samples) % 2)
    angle = rng.uniform(0.0, math.pi, size=options.n_samples)
    outer = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    inner = np.stack([1.0 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    X = np.where(y[:, None] == 0, outer, inner) + rng.normal(scale=0.2, size=outer.shape)
    return Dataset(X=X, y=y.astype(np.int64), task="classification", class_names=["0", "1"])


class ToyData:
    """The plugin the kit registers beside the components it checks."""

    @hookimpl
    def register_datasets(self, register):
        register(DatasetSpec(name="kit_blobs", options=ToyOptions, load=_blobs,
                             description="the conformance kit's blobs (NumPy)"))  # fmt: skip
        register(DatasetSpec(name="kit_moons", options=ToyOptions, load=_moons,
                             description="the conformance kit's moons (NumPy)"))  # fmt: skip


TOY_PLUGIN = ("lossbench.testing.toy_data", ToyData())
