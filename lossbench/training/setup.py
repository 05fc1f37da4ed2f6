"""Setting a run up: the specs and options its config names (checked), then the data, the model's
flat parameter vector and the optimizer state, in the run's dtype."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lossbench.config import GROUPS, options_of
from lossbench.errors import ConfigError, positive_int, require
from lossbench.training.arrays import check_memory, check_weights, read_npz
from lossbench.training.groups import make_segments
from lossbench.training.metrics import Tally
from lossbench.training.prepare import options_from, prepare


def resolve(cfg, registry) -> tuple[dict, dict]:
    """The specs and option dataclasses the config names, checked (bad input raises here)."""
    specs, options = {}, {}
    for group in GROUPS:
        specs[group] = registry.get(group, cfg[group].name)
        options[group] = options_of(specs[group], cfg[group])
    check_trainer(cfg.trainer)
    for key in ("seed", "data_seed"):
        value = cfg.get(key, 0)
        require(value >= 0, key, value, "it must be >= 0 (NumPy's seeds are non-negative)", 0)
    for group in GROUPS:
        check = getattr(specs[group], "check", None)
        if check is not None:
            check(options[group])
    return specs, options


def check_trainer(trainer) -> None:
    """What the trainer schema's types cannot say (choice fields are checked by Hydra)."""
    positive_int(trainer.epochs, "trainer.epochs", 50)
    positive_int(trainer.batch_size, "trainer.batch_size", 32)
    require(trainer.warmup_epochs >= 0, "trainer.warmup_epochs", trainer.warmup_epochs,
            "it must be >= 0 (0 disables warm-up)", 5)  # fmt: skip
    if trainer.early_stopping.enabled:
        positive_int(trainer.early_stopping.patience, "trainer.early_stopping.patience", 10)


def base_lr(options) -> float:
    """The optimizer's learning rate (its ``lr`` field, which registration requires)."""
    return float(options.lr)


@dataclass
class Setup:
    """What the epochs need besides the kernels; the ``*_hp`` arrays are the packed
    options (hp) the kernels read (float64 whatever the run's dtype: ``model_hp`` ends with
    the context, ``specs.CONTEXT``; ``opt_hp`` holds each parameter group's options),
    ``scalars`` the optimizer's scalar state (float64), ``segments`` the optimizer's segments
    of the flat vector (``training.groups``: one per run of tensors sharing a group)."""

    dtype: np.dtype
    state: np.ndarray
    scalars: np.ndarray
    segments: np.ndarray
    grads: np.ndarray
    model_hp: np.ndarray
    loss_hp: np.ndarray
    opt_hp: np.ndarray
    base_lr: float
    batch: int
    chunk: int
    order: np.ndarray
    rng: np.random.Generator
    tally: Tally  # the validation pass's sums of the common metrics
    # how many rows of ``order`` an epoch trains on: all, unless a last minibatch shorter than
    # ModelLayout.min_batch is left out (rows_per_epoch)
    epoch_rows: int = -1

    def epoch_order(self) -> np.ndarray:
        """The rows an epoch trains on, in order: a view of ``order``'s first ``epoch_rows``
        (a view, so each epoch's shuffle of ``order`` reaches it)."""
        if 0 <= self.epoch_rows < len(self.order):
            return self.order[: self.epoch_rows]
        return self.order

    def next_epoch_order(self, shuffle: bool) -> np.ndarray:
        """The training rows' order for the next epoch: ``order`` reshuffled in place by the
        run's shuffle generator (when ``shuffle``), as every epoch of the fit loop and of
        lr_find begins, and explain's batch is the first minibatch of the first."""
        if shuffle:
            self.rng.shuffle(self.order)
        return self.order


def set_up(run) -> Setup:
    """Load and prepare the data, build and initialise the model and the optimizer state;
    fills ``run.dataset``, ``run.layout`` and ``run.flat_params``."""
    cfg, specs, options = run.config, run.specs, run.options
    dtype = np.dtype(str(cfg.trainer.dtype))
    split_ss, init_ss, shuffle_ss, data_ss = run_seeds(cfg)
    dataset = specs["data"].load(options["data"], int(data_ss.generate_state(1)[0]))
    loss_spec = specs["loss"]
    prep = prepare(
        dataset, options_from(options["data"]), loss_spec.target, loss_spec.name, dtype,
        np.random.default_rng(split_ss), source=data_source(cfg.data),
    )  # fmt: skip
    run.dataset = prep
    layout = specs["model"].build(options["model"], prep.X_train.shape[1], prep.n_outputs)
    opt_spec = specs["optimizer"]
    batch = min(int(cfg.trainer.batch_size), len(prep.X_train))
    epoch_rows = rows_per_epoch(getattr(layout, "min_batch", 1), batch, len(prep.X_train), cfg)
    chunk = min(max(batch, 1024), max(len(prep.X_val), 1))
    # weights (a float64 copy while initialising), gradients, optimizer state, work buffers
    n_bytes = layout.n_params * (8 + dtype.itemsize * (2 + opt_spec.state_rows)) + (
        layout.workspace(max(batch, chunk)) + chunk * prep.n_outputs
    ) * dtype.itemsize
    check_memory(
        n_bytes,
        f"model={cfg.model.name} ({layout.n_params:,} parameters for {prep.X_train.shape[1]} "
        f"features and {prep.n_outputs} outputs, {opt_spec.name} keeps {opt_spec.state_rows} "
        f"state rows, in {dtype.name})",
        "make the model smaller (e.g. model.hidden=[64])"
        + (", or use trainer.dtype=float32." if dtype.itemsize > 4 else "."),
    )
    params = np.empty(layout.n_params, dtype=np.float64)
    layout.init(np.random.default_rng(init_ss), params)
    init_from = getattr(options["model"], "init_from", None)
    if init_from:
        load_init(init_from, layout, params)
    run.layout, run.flat_params = layout, params.astype(dtype)
    owner = f"model {specs['model'].name!r} from plugin {specs['model'].plugin!r}"
    seg = make_segments(layout, opt_spec, options["optimizer"], dtype, owner)
    packed = lambda values: np.asarray(values, dtype=np.float64).reshape(-1)  # noqa: E731
    order = np.arange(len(prep.X_train), dtype=np.int64)
    run.train_order = order  # shuffled in place before every epoch (trainer.shuffle)
    return Setup(
        dtype=dtype,
        state=seg.state,
        scalars=seg.scalars,
        segments=seg.bounds,
        grads=np.zeros(layout.n_params, dtype=dtype),
        model_hp=layout.kernel_hp(training=True, seed=stream_seed(cfg)),
        loss_hp=packed(loss_spec.pack(options["loss"])),
        opt_hp=seg.hp,
        base_lr=base_lr(options["optimizer"]),
        batch=batch,
        chunk=chunk,
        order=order,
        rng=np.random.default_rng(shuffle_ss),
        tally=Tally.for_data(prep),
        epoch_rows=epoch_rows,
    )


def rows_per_epoch(least: int, batch: int, rows: int, cfg) -> int:
    """How many rows of each epoch's order train: all of them, unless the last minibatch would
    hold fewer than the model's ``ModelLayout.min_batch`` (batch norm needs 2): then that short
    batch is left out of the epoch, as torch's ``DataLoader(drop_last=True)`` leaves it (the
    order is reshuffled every epoch, so a different row sits out each time). A batch size or a
    training set smaller than ``least`` is refused."""
    if min(batch, rows) < least:
        raise ConfigError(
            f"model={cfg.model.name} needs at least {least} rows in every training minibatch "
            "(ModelLayout.min_batch: batch norm's variance needs 2; torch.nn.BatchNorm1d "
            f"refuses 1), but trainer.batch_size={cfg.trainer.batch_size} over {rows} "
            f"training rows gives minibatches of {min(batch, rows)}. Fix: pass "
            f"trainer.batch_size={least} or more (and at least {least} training rows)."
        )
    short = rows % batch
    return rows - short if 0 < short < least else rows


def run_seeds(cfg) -> list[np.random.SeedSequence]:
    """The run's four random streams: (split, init, shuffle, data). ``data_seed`` makes the
    data (the validation split, a generated dataset), ``seed`` the training (initialisation,
    shuffling), so a sweep that varies ``seed`` keeps one dataset and one split. Each stream is
    the same child of its seed's ``SeedSequence`` as when one seed made all four (a run with
    ``seed == data_seed`` has the bits it had then)."""
    data = np.random.SeedSequence(int(cfg.get("data_seed", 0))).spawn(4)
    train = np.random.SeedSequence(int(cfg.seed)).spawn(4)
    return [data[0], train[1], train[2], data[3]]


def stream_seed(cfg) -> int:
    """The seed of the run's per-step random streams (``lossbench.streams``: dropout): the
    fifth child of ``seed``'s ``SeedSequence`` (the first four are ``run_seeds``'), so the
    same ``seed`` gives the same masks and another ``seed`` others."""
    return int(np.random.SeedSequence(int(cfg.seed)).spawn(5)[4].generate_state(1)[0])


def data_source(data_cfg) -> str:
    """The data as messages name it: ``data=csv (data.path='my.csv')``."""
    path = data_cfg.get("path")
    return f"data={data_cfg.name}" + (f" (data.path={path!r})" if path else "")


def load_init(path: str, layout, params: np.ndarray) -> None:
    """Fill ``params`` from an NPZ weight file holding W0, b0, W1, b1, ... (x @ W + b)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"model.init_from={path!r}: no such file. Fix: pass the model.npz of an earlier run "
            "or a file saved with np.savez(path, W0=..., b0=..., ...)."
        )
    arrays = read_npz(path, "model.init_from", error=ConfigError)
    expected = {name: shape for name, (_, shape) in layout.tensors.items()}
    check_weights(arrays, expected, path)
    views = layout.views(params)
    for k, a in arrays.items():
        views[k][...] = a


@dataclass
class Runner:
    """How a run's epochs run, on the fused or the slow path: ``epoch(t, lr) -> (loss sum,
    samples seen, correct predictions, step count)`` and ``evaluate() -> (loss sum, correct)``
    on the validation set."""

    epoch: Callable[[int, float], tuple]
    evaluate: Callable[[], tuple]
