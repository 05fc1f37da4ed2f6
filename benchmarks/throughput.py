"""Training throughput: lossbench's fused epoch vs a jitted JAX epoch vs PyTorch CPU eager vs
lossbench's NumPy reference epoch, plus the time from process start to the first finished epoch.

    pip install -e '.[bench]'                  # torch==2.13.0, jax[cpu]
    python benchmarks/throughput.py            # full run, several minutes on 2 cores
    python benchmarks/throughput.py --quick    # smoke run

What is timed, for every implementation alike: one pass over the training set in minibatches
(gather the rows, forward, cross-entropy, backward, optimizer step), and the same followed by one
pass over the validation set (loss and accuracy), as a run's ``epoch_seconds`` measures it. The
per-epoch permutation is drawn just before the timer in all of them (lossbench.train does the same
around its own ``epoch_seconds``). The first epoch is a warm-up and is discarded; each row reports
the median of the timed epochs.

- lossbench: ``lossbench.train`` itself runs (same config composition, data preparation, buffers,
  kernels bound with ``kernel_ref``), with ``lossbench.training.fused.train_epoch`` and
  ``evaluate`` wrapped by a timer for the length of the run: the fused epoch alone, and from its
  start to the end of the validation pass ``train`` runs after it.
- JAX: the whole epoch jitted (``lax.scan`` over the minibatches of the permutation, Adam with
  ``jax.tree.map``), the validation pass jitted separately (see ``jax_epoch_fn``).
- PyTorch: a torch.nn.Sequential MLP of the same widths and dtype, torch.optim.SGD / Adam with the
  same hyperparameters, F.cross_entropy, manual minibatching over a per-epoch torch.randperm
  (no DataLoader), torch's default thread count.
- numpy-ref: ``lossbench.training.slow.reference_epoch`` on the same prepared arrays.

Every measurement (each implementation of each row, and each matmul peak) runs in a fresh
subprocess of this script (``--worker``). In one process the thread pools fight over the 2 cores:
numpy's OpenBLAS, scipy's OpenBLAS (which numba's np.dot, hence lossbench, calls) and torch's
OpenMP pool each keep their threads spinning for a while after a call, and alternating between
them measured 2x (BLAS) to 100x+ (small torch MLPs) slower than either alone.

GFLOP/s counts the matmuls of forward and backward as 6 * in * out per sample per layer
(forward 2, weight gradient 2, input gradient 2), set against the best of a few 2048 x 2048
``@`` products in NumPy for the same dtype.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import glob
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

# ---------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    label: str
    overrides: list[str]
    batch: int
    widths_hidden: list[int]
    target_ratio: float  # lossbench / JAX jitted epoch, float32 (epoch alone and with validation)
    reps: int = 20  # timed epochs per implementation (full run), in `rounds` blocks
    ref_reps: int = 10
    rounds: int = 5
    n_train: int | None = None  # expected training rows (checked)


CASES = [
    Case(
        "20-32-3",
        # 1999 blobs, 20% validation (stratified per class) -> 1600 training rows
        [
            "data=blobs",
            "data.n_features=20",
            "data.centers=3",
            "data.n_samples=1999",
            "data.cluster_std=15",
            "model.hidden=[32]",
        ],
        batch=32,
        widths_hidden=[32],
        target_ratio=2.0,
        reps=40,
        ref_reps=10,
        n_train=1600,
    ),
    Case(
        "64-128-10 digits",
        ["data=digits", "model.hidden=[128]"],
        batch=64,
        widths_hidden=[128],
        target_ratio=1.5,
        reps=30,
        ref_reps=10,
        n_train=1438,
    ),
    Case(
        "784-512-256-10",
        # 10000 blobs in 784 dimensions, 20% validation -> 8000 training rows
        [
            "data=blobs",
            "data.n_features=784",
            "data.centers=10",
            "data.n_samples=10000",
            "data.cluster_std=100",
            "model.hidden=[512,256]",
        ],
        batch=128,
        widths_hidden=[512, 256],
        target_ratio=1.0,
        reps=6,
        ref_reps=3,
        rounds=3,
        n_train=8000,
    ),
]
# Blobs with the default cluster_std=1 are separated after one epoch (784-D, Adam: train loss
# 7.5e-10 in epoch 2), so the timed epochs would describe a degenerate regime. The wider
# clusters above keep the loss away from 0 for the whole measurement.
OPTIMIZERS = ("sgd", "adam")
DTYPES = ("float32", "float64")
COMMON = ["loss=cross_entropy", "model=mlp", "model.activation=relu", "trainer.progress=false",
          "trainer.shuffle=true", "tracking=none", "seed=0"]  # fmt: skip
KINDS = ("lossbench", "jax", "torch", "reference")


@dataclass
class Result:
    case: str
    optimizer: str
    dtype: str
    n_train: int
    widths: list[int]
    seconds: dict = field(default_factory=dict)  # kind -> epoch seconds (timed epochs)
    with_val: dict = field(default_factory=dict)  # kind -> epoch + validation pass seconds
    other_cores: float = 0.0  # CPU other processes used during the row's measurements
    peak: float = 0.0  # numpy 2048^3 @ GFLOP/s in this dtype, measured just before the row
    other_mean: float = 0.0

    def rate(self, which, val=False):
        times = (self.with_val if val else self.seconds).get(which)
        return self.n_train / statistics.median(times) if times else float("nan")

    @property
    def flops_per_sample(self):
        return 6 * sum(a * b for a, b in zip(self.widths[:-1], self.widths[1:], strict=True))


# ---------------------------------------------------------------------------------------------
# environment


def blas_info():
    from threadpoolctl import threadpool_info

    rows = []
    for info in threadpool_info():
        rows.append(
            {k: info.get(k) for k in ("user_api", "internal_api", "prefix", "version",
                                       "architecture", "threading_layer", "num_threads")}
            | {"filepath": os.path.basename(info.get("filepath", ""))}
        )  # fmt: skip
    return rows


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_worker(lib, dtype, repeats, n=2048):
    """Best GFLOP/s of an n x n @ n x n product in ``dtype``: NumPy's ``@`` (the reference peak)
    or numba's np.dot (scipy's OpenBLAS, the BLAS lossbench's kernels call)."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n)).astype(dtype)
    b = rng.random((n, n)).astype(dtype)
    c = np.empty_like(a)
    if lib == "numpy":

        def f():
            np.matmul(a, b, out=c)
    else:
        from numba import njit

        @njit
        def dot(a, b, c):
            np.dot(a, b, c)

        def f():
            dot(a, b, c)

    f()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return {"gflops": 2 * n**3 / best / 1e9}


# ---------------------------------------------------------------------------------------------
# lossbench: engine.train with its fused epoch timed


class _Stop(Exception):
    """Ends a served lossbench run between two epochs."""


class _TimedEpoch:
    """Stands in for lossbench.training.fused.train_epoch and .evaluate during one ``train``
    call: calls the real dispatchers and records, per epoch, the seconds of the epoch alone
    (``seconds``) and from the start of the epoch to the end of the validation pass that
    follows it (``with_val``); ``gate`` (if given) runs before each epoch, outside the timer.
    Attribute access (``overloads``, ``compile``) goes to the epoch's dispatcher, so ``train``'s
    compile step is unchanged."""

    def __init__(self, dispatcher, evaluate, gate=None):
        self._dispatcher = dispatcher
        self._evaluate = evaluate
        self._gate = gate
        self._t0 = 0.0
        self.seconds: list[float] = []
        self.with_val: list[float] = []
        self.seen: list[int] = []

    def __call__(self, *args):
        if self._gate is not None:
            self._gate(self)
        self._t0 = t0 = time.perf_counter()
        result = self._dispatcher(*args)
        self.seconds.append(time.perf_counter() - t0)
        self.seen.append(int(result[1]))
        return result

    def evaluate(self, *args):
        result = self._evaluate(*args)
        self.with_val.append(time.perf_counter() - self._t0)
        return result

    def __getattr__(self, name):
        return getattr(self._dispatcher, name)


class _TimedEvaluate:
    """Stands in for lossbench.training.fused.evaluate (see _TimedEpoch)."""

    def __init__(self, timed):
        self._timed = timed

    def __call__(self, *args):
        return self._timed.evaluate(*args)

    def __getattr__(self, name):
        return getattr(self._timed._evaluate, name)


def lossbench_train_timed(overrides, epochs, gate=None):
    """``lossbench.train`` with every fused epoch (and epoch + validation) timed; returns
    (run, timer)."""
    import lossbench
    from lossbench.training import fused

    real, real_eval = fused.train_epoch, fused.evaluate
    timed = _TimedEpoch(real, real_eval, gate)
    fused.train_epoch, fused.evaluate = timed, _TimedEvaluate(timed)
    try:
        run = lossbench.train(overrides=[*overrides, f"trainer.epochs={epochs}"])
    finally:
        fused.train_epoch, fused.evaluate = real, real_eval
    return run, timed


def serve_lossbench(overrides, send, receive):
    """Serve epoch blocks of one lossbench.train run (see ``serve``)."""
    state = {"left": 0, "start": 0, "ready": False}

    def gate(timed):
        if state["left"] == 0:
            if not state["ready"]:
                state["ready"] = True
                send({"ready": True})
            else:
                block = timed.seconds[state["start"] :]
                if len(set(timed.seen)) != 1:
                    raise RuntimeError(f"epochs saw different sample counts: {timed.seen}")
                send({"seconds": block, "with_val": timed.with_val[state["start"] :]})
            n = receive()
            if n is None:
                raise _Stop
            state["left"], state["start"] = n, len(timed.seconds)
        state["left"] -= 1

    try:
        lossbench_train_timed(overrides, 10**9, gate)
    except _Stop:
        pass


# ---------------------------------------------------------------------------------------------
# the same prepared data and model layout as lossbench.train, without training (so the torch
# and reference workers never touch numba's BLAS)


@dataclass
class Prepared:
    config: object
    specs: dict
    options: dict
    dataset: object
    layout: object


def prepare_like_train(overrides):
    from lossbench.config import compose
    from lossbench.plugins import get_plugin_manager
    from lossbench.training.prepare import options_from, prepare
    from lossbench.training.setup import resolve

    pm = get_plugin_manager()
    cfg = compose(overrides, registry=pm.registry)
    specs, hps = resolve(cfg, pm.registry)
    dtype = np.dtype(str(cfg.trainer.dtype))
    split_ss, _init_ss, _shuffle_ss, data_ss = np.random.SeedSequence(int(cfg.seed)).spawn(4)
    dataset = specs["data"].load(hps["data"], int(data_ss.generate_state(1)[0]))
    loss = specs["loss"]
    prep = prepare(
        dataset, options_from(hps["data"]), loss.target, loss.name, dtype,
        np.random.default_rng(split_ss),
    )  # fmt: skip
    layout = specs["model"].build(hps["model"], prep.X_train.shape[1], prep.n_outputs)
    return Prepared(cfg, specs, hps, prep, layout)


# ---------------------------------------------------------------------------------------------
# NumPy reference epoch (lossbench.training.slow)


def reference_epoch_fn(run):
    """A function running one timed NumPy reference epoch; returns its seconds."""
    from lossbench.training.metrics import Tally
    from lossbench.training.slow import PythonParts, python_evaluate, reference_epoch

    prep, layout, specs, hps = run.dataset, run.layout, run.specs, run.options
    dtype = prep.X_train.dtype
    params = np.empty(layout.n_params, dtype=np.float64)
    layout.init(np.random.default_rng(0), params)
    params = params.astype(dtype)
    opt = specs["optimizer"]
    state = np.zeros((opt.state_rows, layout.n_params), dtype=dtype)
    if opt.init_state is not None:
        opt.init_state(state, hps["optimizer"])
    scalars = np.zeros(opt.scalar_slots)
    if opt.init_scalars is not None:
        opt.init_scalars(scalars, hps["optimizer"])
    vec = lambda v: np.asarray(v, dtype=np.float64).reshape(-1)  # noqa: E731
    model_hp, loss_hp = layout.kernel_hp(training=True), vec(specs["loss"].pack(hps["loss"]))
    opt_hp = vec(opt.pack(hps["optimizer"]))
    lr = float(hps["optimizer"].lr)
    batch = int(run.config.trainer.batch_size)
    rng = np.random.default_rng(1)
    order = np.arange(len(prep.X_train), dtype=np.int64)
    step = [0]
    tally = Tally.for_data(prep)

    parts = PythonParts(
        specs["model"].reference_forward, specs["model"].reference_backward,
        specs["loss"].reference, opt.reference,
    )  # fmt: skip

    def epoch():
        rng.shuffle(order)
        t0 = time.perf_counter()
        total, seen, step[0] = reference_epoch(
            specs["model"], specs["loss"], opt, params, layout.layout, model_hp, loss_hp, opt_hp,
            state, scalars, prep.X_train, prep.Y_train, order, batch, step[0], lr,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        python_evaluate(
            parts, params, layout.layout, model_hp, loss_hp, prep.X_val, prep.Y_val,
            prep.labels_val, max(batch, 1024), tally,
        )  # fmt: skip
        with_val = time.perf_counter() - t0
        if seen != len(order) or not math.isfinite(total):
            raise RuntimeError(f"reference epoch saw {seen} rows, loss {total}")
        return seconds, with_val

    return epoch


# ---------------------------------------------------------------------------------------------
# PyTorch eager


def torch_epoch_fn(run, optimizer):
    """A function running one timed PyTorch epoch; returns its seconds."""
    import torch
    import torch.nn.functional as F

    prep, hps = run.dataset, run.options
    tdtype = {"float32": torch.float32, "float64": torch.float64}[str(prep.X_train.dtype)]
    X = torch.from_numpy(prep.X_train)
    y = torch.from_numpy(prep.labels_train)  # int64 class labels
    widths = [X.shape[1], *run.config.model.hidden, prep.n_outputs]
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b, dtype=tdtype))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    h = hps["optimizer"]
    if optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=h.lr, momentum=h.momentum, dampening=h.dampening,
            nesterov=h.nesterov, weight_decay=h.weight_decay,
        )  # fmt: skip
    else:
        opt = torch.optim.Adam(
            model.parameters(), lr=h.lr, betas=(h.beta1, h.beta2), eps=h.eps,
            weight_decay=h.weight_decay, amsgrad=h.amsgrad,
        )  # fmt: skip
    batch = int(run.config.trainer.batch_size)
    n = X.shape[0]
    X_val = torch.from_numpy(prep.X_val)
    y_val = torch.from_numpy(prep.labels_val)

    def epoch():
        perm = torch.randperm(n)
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            out = model(X[idx])
            loss = F.cross_entropy(out, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            out = model(X_val)
            val_loss = F.cross_entropy(out, y_val).item()
            (out.argmax(dim=1) == y_val).sum().item()
        with_val = time.perf_counter() - t0
        if not (math.isfinite(loss.item()) and math.isfinite(val_loss)):
            raise RuntimeError("torch loss is not finite")
        return seconds, with_val

    return epoch


# ---------------------------------------------------------------------------------------------
# JAX: the whole epoch jitted


def jax_epoch_fn(run, optimizer):
    """A function running one timed JAX epoch (and its validation pass); returns their seconds.

    Idiomatic JAX: the whole epoch is one jitted function, ``lax.scan`` over the minibatches of
    a per-epoch permutation (the partial last batch as one more step inside the same jitted
    function, so every row is trained on as in the other implementations), gradients by
    ``jax.value_and_grad``, SGD and Adam written with ``jax.tree.map`` (torch.optim's update
    rules), parameters and optimizer state donated to the call. float64 turns on x64."""
    import jax

    prep, hps = run.dataset, run.options
    if str(prep.X_train.dtype) == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax import lax

    dtype = prep.X_train.dtype
    X, y = jnp.asarray(prep.X_train), jnp.asarray(prep.labels_train.astype(np.int32))
    X_val, y_val = jnp.asarray(prep.X_val), jnp.asarray(prep.labels_val.astype(np.int32))
    widths = [X.shape[1], *run.config.model.hidden, prep.n_outputs]
    rng = np.random.default_rng(0)
    params = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):  # torch.nn.Linear's default init
        k = 1.0 / math.sqrt(a)
        params.append((jnp.asarray(rng.uniform(-k, k, (a, b)).astype(dtype)),
                       jnp.asarray(rng.uniform(-k, k, b).astype(dtype))))  # fmt: skip
    h = hps["optimizer"]
    if h.weight_decay or getattr(h, "amsgrad", False) or getattr(h, "momentum", 0):
        raise ValueError("the JAX epoch implements plain SGD and Adam (the benchmark's settings)")
    batch, n = int(run.config.trainer.batch_size), X.shape[0]

    def forward(params, x):
        for W, b in params[:-1]:
            x = jax.nn.relu(x @ W + b)
        W, b = params[-1]
        return x @ W + b

    def loss_fn(params, x, labels):
        logp = jax.nn.log_softmax(forward(params, x))
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

    grad_fn = jax.value_and_grad(loss_fn)
    if optimizer == "sgd":
        opt_state = jnp.zeros((), jnp.int32)

        def update(params, state, g):
            return jax.tree.map(lambda p, g: p - h.lr * g, params, g), state
    else:
        m0, v0 = (jax.tree.map(jnp.zeros_like, params) for _ in "mv")  # two buffers (donated)
        opt_state = (jnp.zeros((), jnp.int32), m0, v0)
        b1, b2, eps = h.beta1, h.beta2, h.eps

        def update(params, state, g):
            t, m, v = state
            t = t + 1
            m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
            v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
            step = h.lr / (1 - b1 ** t.astype(dtype))
            bc2 = jnp.sqrt(1 - b2 ** t.astype(dtype))
            new = jax.tree.map(lambda p, m, v: p - step * m / (jnp.sqrt(v) / bc2 + eps),
                               params, m, v)  # fmt: skip
            return new, (t, m, v)

    def step(carry, idx, X, y):
        params, state = carry
        loss, g = grad_fn(params, X[idx], y[idx])
        return update(params, state, g), loss * idx.shape[0]

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def epoch_fn(params, state, perm, X, y):
        full = n // batch
        body = functools.partial(step, X=X, y=y)
        carry, losses = lax.scan(body, (params, state), perm[: full * batch].reshape(full, batch))
        total = losses.sum()
        if n % batch:  # the partial last batch (static shapes: known when tracing)
            carry, last = body(carry, perm[full * batch :])
            total = total + last
        return carry[0], carry[1], total

    @jax.jit
    def validate(params, X, labels):
        out = forward(params, X)
        logp = jax.nn.log_softmax(out)
        loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
        return loss, jnp.sum(jnp.argmax(out, axis=1) == labels)

    perm_rng = np.random.default_rng(1)
    box = {"params": params, "state": opt_state}

    def epoch():
        perm = jax.device_put(perm_rng.permutation(n).astype(np.int32))
        t0 = time.perf_counter()
        p, st, total = epoch_fn(box["params"], box["state"], perm, X, y)
        total = float(jax.block_until_ready(total))
        seconds = time.perf_counter() - t0
        val_loss, _correct = jax.block_until_ready(validate(p, X_val, y_val))
        with_val = time.perf_counter() - t0
        box["params"], box["state"] = p, st
        if not (math.isfinite(total) and math.isfinite(float(val_loss))):
            raise RuntimeError("jax loss is not finite")
        return seconds, with_val

    return epoch


# ---------------------------------------------------------------------------------------------
# start-up


API_SNIPPET = r"""
import json, sys, time
t_import = time.time()
import lossbench
t_imported = time.time()
run = lossbench.train(overrides=["trainer.progress=false", "trainer.epochs=1", *sys.argv[1:]])
t_done = time.time()
print(json.dumps({"t_import": t_import, "t_imported": t_imported, "t_done": t_done,
                  "status": run.status, "timings": run.timings,
                  "epoch_seconds": run.history[0]["epoch_seconds"]}))
"""


def newest_summary(folder):
    found = glob.glob(os.path.join(folder, "outputs", "*", "*", "summary.json"))
    with open(max(found, key=os.path.getmtime)) as f:
        return json.load(f)["timings"]


def startup(repeats, extra=()):
    """Wall time of `python -m lossbench trainer.progress=false trainer.epochs=1 [extra]` (default
    digits config) and of a `python -c` that calls lossbench.train with the same overrides, after
    one warm-up run of each (numba's disk cache warm). All runs of one kind share one scratch
    working directory, as repeated runs in a project folder do."""
    cli, api = [], []
    cmd = [sys.executable, "-m", "lossbench", "trainer.progress=false", "trainer.epochs=1", *extra]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
            if i:
                cli.append({"wall": wall, **newest_summary(tmp)})
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats + 1):
            t_spawn = time.time()
            proc = subprocess.run(
                [sys.executable, "-c", API_SNIPPET, *extra], cwd=tmp, capture_output=True, text=True
            )
            t_exit = time.time()
            if proc.returncode != 0:
                raise RuntimeError(f"python -c lossbench.train failed:\n{proc.stderr[-2000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if i:
                api.append(
                    {
                        "to_first_epoch": r["t_done"] - t_spawn,
                        "interpreter": r["t_import"] - t_spawn,
                        "import_lossbench": r["t_imported"] - r["t_import"],
                        "train_call": r["t_done"] - r["t_imported"],
                        "wall": t_exit - t_spawn,
                        **r["timings"],
                        "epoch_seconds": r["epoch_seconds"],
                    }
                )
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    return {
        "cli": {k: med(cli, k) for k in cli[0]},
        "api": {k: med(api, k) for k in api[0]},
        "repeats": repeats,
        "extra": list(extra),
    }


def print_startup(st):
    cli, api = st["cli"], st["api"]
    extra = "".join(f" {x}" for x in st["extra"])
    print(
        f"  python -m lossbench trainer.progress=false trainer.epochs=1{extra}: wall "
        f"{cli['wall']:.2f} s; summary.json timings setup {cli['setup_seconds']:.3f} s, "
        f"compile {cli['compile_seconds']:.3f} s, train {cli['train_seconds']:.4f} s, "
        f"total {cli['total_seconds']:.3f} s"
    )
    print(
        f"  python -c 'import lossbench; lossbench.train(...{extra})': process start to first "
        f"epoch done {api['to_first_epoch']:.2f} s (interpreter {api['interpreter']:.3f} s, import "
        f"lossbench {api['import_lossbench']:.3f} s, train() {api['train_call']:.3f} s: setup "
        f"{api['setup_seconds']:.3f} s, compile {api['compile_seconds']:.3f} s, epoch "
        f"{api['epoch_seconds']:.4f} s, the rest hooks), process exit {api['wall']:.2f} s"
    )


# ---------------------------------------------------------------------------------------------
# report


def fmt_rate(x):
    return f"{x:,.0f}" if math.isfinite(x) else "-"


def header(args, peaks):
    import jax
    import numba
    import scipy
    import torch

    import lossbench

    lines = [
        f"lossbench throughput benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}",
        f"machine: {cpu_model()}, {os.cpu_count()} cores, load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"numba {numba.__version__}, torch {torch.__version__}, jax {jax.__version__} "
        f"(devices {jax.devices()}), lossbench {lossbench.__version__}",
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
        f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}",
        "BLAS/threading libraries loaded (threadpoolctl):",
    ]
    for b in blas_info():
        lines.append(
            f"  {b['internal_api']:<8} {b['prefix']:<18} version {b['version']} "
            f"architecture {b.get('architecture')} threads {b['num_threads']} ({b['filepath']})"
        )
    lines.append(
        "  (numpy's @ and the numpy-ref epoch use numpy.libs' OpenBLAS; lossbench's np.dot in "
        "numba calls scipy.libs' OpenBLAS through scipy.linalg.cython_blas)"
    )
    lines.append(
        f"torch: {torch.get_num_threads()} intra-op threads (default), BLAS MKL "
        f"{torch.backends.mkl.is_available()}, oneDNN {torch.backends.mkldnn.is_available()}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    lines.append("each measurement below ran in its own subprocess")
    for dtype in DTYPES:
        lines.append(
            f"matmul peak {dtype}: {peaks[dtype]['numpy']:.1f} GFLOP/s (numpy 2048^3 @, best of "
            f"{args.peak_repeats}; the %peak reference); numba np.dot (scipy's OpenBLAS) "
            f"{peaks[dtype]['numba']:.1f} GFLOP/s"
        )
    return lines


def table(results, cases, peaks, val=False):
    """The rows as text: samples/s of the epoch alone (or, ``val``, of the epoch followed by
    its validation pass), ratios, GFLOP/s and the float32 target against JAX."""
    by_label = {c.label: c for c in cases}
    cols = ["model (n_train, batch)", "opt", "dtype", "lossbench/s", "jax/s", "pytorch/s",
            "numpy-ref/s", "lb/jax", "lb/torch", "lb GFLOP/s", "peak", "%peak", "target",
            "result", "other"]  # fmt: skip
    rows = []
    for r in results:
        c = by_label[r.case]
        lb, jx, pt, ref = (r.rate(k, val) for k in KINDS)
        gflops = lb * r.flops_per_sample / 1e9
        peak = r.peak or peaks[r.dtype]["numpy"]
        target, result = "-", "-"
        if r.dtype == "float32":
            target = f">={c.target_ratio:g}x jax"
            result = "PASS" if lb / jx >= c.target_ratio else "MISS"
        rows.append(
            [f"{r.case} ({r.n_train}, {c.batch})", r.optimizer, r.dtype, fmt_rate(lb),
             fmt_rate(jx), fmt_rate(pt), fmt_rate(ref), f"{lb / jx:.2f}x", f"{lb / pt:.2f}x",
             f"{gflops:.1f}", f"{peak:.0f}", f"{gflops / peak:.1%}", target, result,
             f"{r.other_mean:.2f}/{r.other_cores:.2f}".replace("nan", "-")]
        )  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows, strict=True)]
    right = {3, 4, 5, 6, 7, 8, 9, 10, 11, 14}
    out = []
    for row in [cols, ["-" * w for w in widths], *rows]:
        cells = [str(x).rjust(w) if i in right else str(x).ljust(w)
                 for i, (x, w) in enumerate(zip(row, widths, strict=True))]  # fmt: skip
        out.append("  ".join(cells).rstrip())
    return out


def serve(job):
    """Worker process: set up one implementation of one row, say {"ready": true}, then for each
    line N on stdin run N epochs and answer {"seconds": [...]}; an empty line or EOF ends."""

    def send(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def receive():
        line = sys.stdin.readline().strip()
        return int(line) if line else None

    kind = job["kind"]
    if kind == "lossbench":
        serve_lossbench(job["overrides"], send, receive)
        return
    prep = prepare_like_train(job["overrides"])
    if kind == "torch":
        epoch = torch_epoch_fn(prep, job["optimizer"])
    elif kind == "jax":
        epoch = jax_epoch_fn(prep, job["optimizer"])
    elif kind == "reference":
        epoch = reference_epoch_fn(prep)
    else:
        raise ValueError(kind)
    send(
        {
            "ready": True,
            "n_train": len(prep.dataset.X_train),
            "widths": [int(x) for x in prep.layout.layout[:, 0]] + [int(prep.layout.layout[-1, 1])],
        }
    )
    while (n := receive()) is not None:
        times = [epoch() for _ in range(n)]
        send({"seconds": [a for a, _ in times], "with_val": [b for _, b in times]})


def proc_cpu_seconds(pid):
    """CPU seconds (user + system, all threads) of a running process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


class Worker:
    """One implementation of one row, served by a subprocess of this script (``--serve``)."""

    def __init__(self, job):
        self.job = job
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", json.dumps(job)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.info = None
        self.seconds: list[float] = []
        self.with_val: list[float] = []  # epoch + validation pass
        self.other: list[tuple[float, float]] = []  # per block: (other processes' CPU s, wall s)

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            raise RuntimeError(f"worker {self.job['kind']} died:\n{err[-3000:]}")
        return json.loads(line)

    def ready(self):
        self.info = self._read()
        return self.info

    def run(self, n, keep=True):
        """Run n epochs; keep their seconds and the CPU other processes used meanwhile."""
        b0, c0, t0 = busy_cpu_seconds(), proc_cpu_seconds(self.proc.pid), time.perf_counter()
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        answer = self._read()
        wall = time.perf_counter() - t0
        other = busy_cpu_seconds() - b0 - (proc_cpu_seconds(self.proc.pid) - c0)
        if keep:
            self.seconds += answer["seconds"]
            self.with_val += answer["with_val"]
            self.other.append((other, wall))
        return answer["seconds"]

    def disturbed(self):
        """Did other processes use > 2 * IDLE_CORES during the last block? (Judged only for
        blocks of 0.1 s or more: /proc/stat counts in 10 ms ticks.)"""
        cpu, wall = self.other[-1]
        return wall >= 0.1 and cpu / wall > 2 * IDLE_CORES

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


# This machine may be shared (another developer's tests): before each worker, wait until the
# other processes use less than IDLE_CORES of CPU, and record how much they used while it ran.
IDLE_CORES = 0.15
_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_cpu_seconds():
    """CPU seconds all processes have used (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / _CLK


def wait_for_idle(max_wait, window=0.25):
    """Sleep until the other processes use < IDLE_CORES over a ``window`` (at most max_wait s);
    returns the seconds waited."""
    waited = 0.0
    while True:
        b0 = busy_cpu_seconds()
        time.sleep(window)
        if (busy_cpu_seconds() - b0) / window < IDLE_CORES or waited >= max_wait:
            return waited
        waited += window


WAITED = [0.0]


def one_shot(job, max_wait=0.0):
    """Run a one-shot ``job`` (a matmul peak) in a fresh process."""
    if max_wait:
        WAITED[0] += wait_for_idle(max_wait)
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_row(job, rounds, block, ref_block, max_wait):
    """Time one row: four worker processes (lossbench, jax, torch, reference) set up side by
    side, one warm-up epoch each, then ``rounds`` rounds in which each runs a block of epochs in
    turn (rotating the order), so that slow drifts of the machine's speed hit all alike. A
    block during which other processes used > 2 * IDLE_CORES is discarded and run again once."""
    workers = {k: Worker({**job, "kind": k}) for k in KINDS}
    try:
        for w in workers.values():
            w.ready()
        for w in workers.values():
            w.run(1, keep=False)  # warm-up
        kinds = list(workers)
        for r in range(rounds):
            for k in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                w = workers[k]
                n = ref_block if k == "reference" else block
                for attempt in range(2):
                    if max_wait:
                        WAITED[0] += wait_for_idle(max_wait)
                    time.sleep(0.05)  # let the previous worker's BLAS/OpenMP threads go idle
                    kept = len(w.seconds)
                    w.run(n)
                    if not w.disturbed() or attempt == 1:
                        break
                    del w.seconds[kept:], w.with_val[kept:], w.other[-1]  # disturbed: again
    finally:
        for w in workers.values():
            w.close()
    return workers


def main(argv=None):
    ap = argparse.ArgumentParser(description="lossbench vs PyTorch vs NumPy training throughput")
    ap.add_argument("--quick", action="store_true", help="few repetitions: a smoke run")
    ap.add_argument("--cases", default="all", help="comma-separated case labels' first token")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated: float32,float64")
    ap.add_argument("--no-startup", action="store_true", help="skip the start-up measurement")
    ap.add_argument("--json", help="also write raw epoch times and results to this file")
    ap.add_argument(
        "--max-wait",
        type=float,
        default=None,
        help="seconds to wait, before each measurement, for other processes to go idle "
        "(default 120, --quick 10; 0 = never wait)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("LOSSBENCH_LOAD_PLUGINS", "")  # built-ins only, as the tests do
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(peak_worker(job["lib"], job["dtype"], job["repeats"])))
        return
    if args.serve:
        serve(json.loads(args.serve))
        return
    args.peak_repeats = 3 if args.quick else 5
    if args.max_wait is None:
        args.max_wait = 10.0 if args.quick else 60.0
    sub = lambda job: one_shot(job, args.max_wait)  # noqa: E731

    cases = CASES
    if args.cases != "all":
        wanted = set(args.cases.split(","))
        cases = [c for c in CASES if c.label.split()[0] in wanted]

    peaks = {
        dtype: {
            lib: sub({"kind": "peak", "lib": lib, "dtype": dtype, "repeats": args.peak_repeats})[
                "gflops"
            ]
            for lib in ("numpy", "numba")
        }
        for dtype in DTYPES
    }
    import torch  # noqa: F401  (so that the header lists its libraries)

    for line in header(args, peaks):
        print(line, flush=True)
    print(flush=True)

    results = []
    t_start = time.perf_counter()
    for c in cases:
        rounds = 1 if args.quick else c.rounds
        block = 2 if args.quick else c.reps // c.rounds
        ref_block = 2 if args.quick else c.ref_reps // c.rounds
        for dtype in args.dtypes.split(","):
            for opt in OPTIMIZERS:
                overrides = [*COMMON, *c.overrides, f"optimizer={opt}", f"trainer.dtype={dtype}",
                             f"trainer.batch_size={c.batch}"]  # fmt: skip
                peak = sub({"kind": "peak", "lib": "numpy", "dtype": dtype, "repeats": 3})
                w = measure_row(
                    {"overrides": overrides, "optimizer": opt}, rounds, block, ref_block,
                    args.max_wait,
                )  # fmt: skip
                info = w["torch"].info
                if c.n_train is not None and info["n_train"] != c.n_train:
                    raise RuntimeError(f"{c.label}: {info['n_train']} rows, not {c.n_train}")
                r = Result(
                    c.label, opt, dtype, info["n_train"], info["widths"],
                    {k: w[k].seconds for k in KINDS}, {k: w[k].with_val for k in KINDS},
                )  # fmt: skip
                blocks = [x for k in w for x in w[k].other]
                r.other_mean = max(0.0, sum(c for c, _ in blocks) / sum(t for _, t in blocks))
                long = [c / t for c, t in blocks if t >= 0.1]
                r.other_cores = max(long, default=float("nan"))
                r.peak = peak["gflops"]
                results.append(r)
                print(
                    f"  measured {c.label} {opt} {dtype}: "
                    + ", ".join(f"{k} {fmt_rate(r.rate(k))}" for k in KINDS)
                    + " samples/s",
                    file=sys.stderr,
                    flush=True,
                )
    bench_seconds = time.perf_counter() - t_start

    reps_note = (
        "1 round of 2 epochs each"
        if args.quick
        else "; ".join(
            f"{c.label.split()[0]} {c.rounds} rounds x {c.reps // c.rounds} (numpy-ref "
            f"{c.ref_reps // c.rounds})"
            for c in cases
        )
    )
    print(
        "samples/s = training rows / median epoch seconds over interleaved rounds (each "
        "implementation in its own process, one warm-up epoch discarded): " + reps_note
    )
    print(
        "GFLOP/s counts 6*in*out per sample per layer; peak = numpy 2048^3 @ GFLOP/s measured "
        "just before the row (best of 3), %peak against it; other = CPU (cores) used by other "
        "processes while the row's blocks ran: over all blocks / worst block of >= 0.1 s"
    )
    print("\nthe epoch alone:")
    for line in table(results, cases, peaks):
        print(line)
    print("\nthe epoch followed by its validation pass (as a run's epoch_seconds):")
    for line in table(results, cases, peaks, val=True):
        print(line)
    print(f"(throughput rows took {bench_seconds:.0f} s, of which {WAITED[0]:.0f} s waiting for "
          f"other processes to go idle; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")  # fmt: skip

    st = []
    if not args.no_startup:
        repeats = 2 if args.quick else 5
        print()
        print(f"start-up, warm numba cache (median of {repeats} after one warm-up run):")
        for extra in ((), ("tracking=none",)):
            if args.max_wait:
                WAITED[0] += wait_for_idle(args.max_wait)
            st.append(startup(repeats, extra))
            print_startup(st[-1])

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "peaks": peaks,
                    "blas": blas_info(),
                    "env": {
                        k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                    },
                    "results": [r.__dict__ for r in results],
                    "startup": st,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
