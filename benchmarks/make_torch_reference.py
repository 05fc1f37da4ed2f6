"""Write tests/data/torch_reference.json: float64 values computed by PyTorch, so that
tests/test_torch_reference.py can hold lossbench's kernels and NumPy references to PyTorch
without importing torch.

    pip install torch==2.13.0        # or: pip install -e '.[bench]'
    python benchmarks/make_torch_reference.py

NAdam's torch values are the example plugin's own golden file, written by
plugins/lossbench-nadam/tests/make_golden.py with lossbench.testing.golden.

Everything here is deterministic (fixed inputs written out literally or drawn from a seeded NumPy
generator), so re-running it with the same torch version reproduces the file.

Contents:
  losses      torch.nn losses (mean reduction) on fixed predictions/targets in lossbench's target
              layouts: value and d loss / d pred.
  optimizers  torch.optim optimizers fed a fixed sequence of 5 gradients on a 7-value parameter
              vector: the parameters after every step. Hyperparameters use lossbench's names
              (betas -> beta1, beta2).
  models      a 3-5-2 MLP (W stored (in, out), i.e. torch's weight transposed) for each
              activation: output for a fixed x and d sum(out * dout) / d W, b.
  models_two_hidden   the same for a 3-5-4-2 MLP (two hidden layers).
  linear      one torch.nn.Linear(3, 2) (lossbench's `linear` model): output and gradients.
  float32     the losses and optimizers cases computed by torch in float32 (inputs rounded to
              float32, results stored as the float64 values of the float32 numbers).
  param_groups  the 3-5-2 relu MLP trained 5 full-batch steps on MSELoss by torch.optim
              optimizers with two parameter groups (weights as configured, biases with
              weight_decay=0): the parameters after every step.
  dropout     torch.nn.Dropout(p) in training mode, float32 and float64: the value a kept 1.0
              becomes (1 / (1 - p) as torch forms it), a fixed row x and torch's output for it
              (zeros where dropped).
  schedules   every epoch's learning rate from torch.optim.lr_scheduler (StepLR,
              CosineAnnealingLR, LinearLR warm-up chained by SequentialLR) for trainer options
              named as lossbench names them.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "torch_reference.json"

torch.set_default_dtype(torch.float64)


def t64(a, dtype=torch.float64):
    """``a`` as a torch tensor of ``dtype`` (float64 values rounded once to float32 for float32)."""
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=dtype)


def tolist(t):
    return t.detach().cpu().numpy().astype(np.float64).tolist()


# ---------------------------------------------------------------------------------------------
# losses

# 5 x 3 predictions with large-magnitude entries (stable log-sum-exp / softplus paths) and a row
# where two logits tie.
PRED = [
    [0.3, -1.2, 2.5],
    [40.0, -40.0, 0.0],
    [-40.0, 39.5, 40.0],
    [1.0, 1.0, -0.75],
    [-2.0, 0.125, 100.0],
]
# real-valued targets for mse/mae/huber: some differences are exactly 0, +-0.5 and +-1.5
# (the L1 kink and the Huber thresholds for delta 0.5 and 1.5)
VALUES_TARGET = [
    [0.3, -0.7, 1.0],
    [39.0, -40.0, 0.5],
    [-41.5, 39.5, 38.5],
    [1.0, 0.0, -2.25],
    [-1.5, 0.625, 99.0],
]
CLASS_TARGET = [[2.0], [0.0], [1.0], [1.0], [2.0]]  # class indices as a float column
# binary (two-class) layout: one logit column, 0/1 targets
BINARY_PRED = [[0.3], [40.0], [-40.0], [0.0], [-2.5], [100.0], [-100.0]]
BINARY_TARGET = [[1.0], [1.0], [1.0], [0.0], [0.0], [0.0], [1.0]]
# several independent 0/1 outputs (BCEWithLogitsLoss is elementwise), same 5 x 3 logits
MULTI_TARGET = [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def loss_case(name, lossbench_name, options, fn, pred, target, torch_target, dtype):
    x = t64(pred, dtype).requires_grad_(True)
    value = fn(x, torch_target)
    assert value.dtype == dtype and x.grad is None
    value.backward()
    return {
        "name": name,
        "loss": lossbench_name,
        "options": options,
        "pred": pred,
        "target": target,
        "value": value.item(),
        "grad": tolist(x.grad),
    }


def losses(dtype=torch.float64):
    """The loss cases, computed by torch in ``dtype`` (inputs rounded to it first)."""
    vt = t64(VALUES_TARGET, dtype)
    cls = t64(CLASS_TARGET)[:, 0].long()
    cases = [
        loss_case("mse", "mse", {}, torch.nn.MSELoss(), PRED, VALUES_TARGET, vt, dtype),
        loss_case("l1", "mae", {}, torch.nn.L1Loss(), PRED, VALUES_TARGET, vt, dtype),
    ]
    for delta in (0.5, 1.5):
        cases.append(
            loss_case(
                f"huber_delta{delta}", "huber", {"delta": delta},
                torch.nn.HuberLoss(delta=delta), PRED, VALUES_TARGET, vt, dtype,
            )
        )  # fmt: skip
    cases.append(
        loss_case(
            "bce_with_logits", "bce", {}, torch.nn.BCEWithLogitsLoss(), BINARY_PRED,
            BINARY_TARGET, t64(BINARY_TARGET, dtype), dtype,
        )
    )  # fmt: skip
    cases.append(
        loss_case(
            "bce_with_logits_multilabel", "bce", {}, torch.nn.BCEWithLogitsLoss(), PRED,
            MULTI_TARGET, t64(MULTI_TARGET, dtype), dtype,
        )
    )  # fmt: skip
    for eps in (0.0, 0.1):
        cases.append(
            loss_case(
                f"cross_entropy_ls{eps}", "cross_entropy", {"label_smoothing": eps},
                torch.nn.CrossEntropyLoss(label_smoothing=eps), PRED, CLASS_TARGET, cls, dtype,
            )
        )  # fmt: skip
    return cases


# ---------------------------------------------------------------------------------------------
# optimizers

P0 = [0.5, -1.25, 0.0, 2.0, -0.3, 1e-3, 3.75]


def gradients():
    rng = np.random.default_rng(20240613)
    g = rng.normal(scale=1.5, size=(5, len(P0)))
    g[1, 2] = 0.0  # a zero gradient entry
    g[3, 5] = 0.0
    g[4, 0] = -g[4, 0]
    return g.round(6)  # short decimal literals in the JSON


# (case name, lossbench optimizer, lossbench hyperparameters); torch gets the same values with
# torch's names (beta1, beta2 -> betas)
OPT_CASES = [
    ("sgd", "sgd", {"lr": 0.1}),
    ("sgd_momentum", "sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd_momentum_dampening", "sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1}),
    ("sgd_nesterov", "sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("sgd_weight_decay", "sgd", {"lr": 0.1, "weight_decay": 0.05}),
    # weight decay together with each momentum variant (each is a separate branch of the kernel)
    ("sgd_momentum_weight_decay", "sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.05}),
    ("sgd_momentum_dampening_weight_decay", "sgd",
     {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.05}),
    ("sgd_nesterov_weight_decay", "sgd",
     {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.05}),
    ("adam", "adam", {"lr": 0.01}),
    ("adam_weight_decay", "adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("adam_amsgrad_betas", "adam", {"lr": 0.01, "amsgrad": True, "beta1": 0.8, "beta2": 0.99}),
    # eps large enough to matter (|g| ~ 1.5): where it enters the denominator shows
    ("adam_eps", "adam", {"lr": 0.01, "eps": 0.1}),
    ("adamw", "adamw", {"lr": 0.01}),  # torch's default weight_decay 0.01, as lossbench's
    ("adamw_amsgrad", "adamw", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.2}),
    ("adamw_eps", "adamw", {"lr": 0.01, "eps": 0.1}),
    ("rmsprop", "rmsprop", {"lr": 0.01}),
    ("rmsprop_centered", "rmsprop", {"lr": 0.01, "centered": True}),
    ("rmsprop_momentum", "rmsprop", {"lr": 0.01, "momentum": 0.9}),
    ("rmsprop_weight_decay_centered_momentum", "rmsprop",
     {"lr": 0.01, "weight_decay": 0.1, "centered": True, "momentum": 0.5, "alpha": 0.9}),
    ("rmsprop_eps", "rmsprop", {"lr": 0.01, "eps": 0.1}),
    ("adagrad", "adagrad", {"lr": 0.1}),
    ("adagrad_lr_decay", "adagrad", {"lr": 0.1, "lr_decay": 0.2}),
    ("adagrad_initial_accumulator", "adagrad", {"lr": 0.1, "initial_accumulator_value": 0.5}),
    ("adagrad_weight_decay", "adagrad", {"lr": 0.1, "weight_decay": 0.1}),
    ("adagrad_lr_decay_weight_decay", "adagrad", {"lr": 0.1, "lr_decay": 0.2, "weight_decay": 0.1}),
    ("adagrad_eps", "adagrad", {"lr": 0.1, "eps": 0.1}),
]  # fmt: skip
TORCH_OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}


def torch_kwargs(hp: dict) -> dict:
    kwargs = {k: v for k, v in hp.items() if k not in ("beta1", "beta2")}
    if "beta1" in hp or "beta2" in hp:
        kwargs["betas"] = (hp.get("beta1", 0.9), hp.get("beta2", 0.999))
    return kwargs


def optimizers(dtype=torch.float64):
    """The optimizer cases, run by torch on a parameter of ``dtype`` (P0 and the gradients
    rounded to it; hyperparameters are Python floats, as torch.optim takes them)."""
    grads = gradients()
    cases = []
    for name, lb_name, lb_hp in OPT_CASES:
        cls, kwargs = TORCH_OPTIMIZERS[lb_name], torch_kwargs(lb_hp)
        p = torch.nn.Parameter(t64(P0, dtype))
        opt = cls([p], **kwargs)
        steps = []
        for g in grads:
            p.grad = t64(g, dtype)
            opt.step()
            assert p.dtype == dtype
            steps.append(tolist(p))
        args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        cases.append(
            {
                "name": name,
                "optimizer": lb_name,
                "options": lb_hp,
                "torch": f"torch.optim.{cls.__name__}({args})",
                "params0": P0,
                "grads": grads.tolist(),
                "params": steps,
            }
        )
    return cases


# ---------------------------------------------------------------------------------------------
# models

# x: 4 rows of 3 features; the last row is all zeros and b0[1] = 0, so hidden unit 1 sees z = 0
# exactly there (relu / leaky_relu at the kink)
X = [[0.5, -1.0, 2.0], [-1.5, 0.25, 0.75], [3.0, 2.0, -1.0], [0.0, 0.0, 0.0]]
DOUT = [[1.0, -0.5], [0.25, 2.0], [-1.5, 0.75], [0.5, 0.5]]


def model_weights(widths, seed):
    """W_l (in, out) from U(-1, 1) and b_l from U(-0.5, 0.5), drawn layer by layer; b0[1] = 0."""
    rng = np.random.default_rng(seed)
    params = {}
    for l, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        params[f"W{l}"] = rng.uniform(-1, 1, size=(n_in, n_out)).round(4)
        params[f"b{l}"] = rng.uniform(-0.5, 0.5, size=n_out).round(4)
    if len(widths) > 2:
        params["b0"][1] = 0.0
    return params


ACTIVATIONS = {
    "relu": torch.nn.ReLU(),
    "tanh": torch.nn.Tanh(),
    "sigmoid": torch.nn.Sigmoid(),
    "gelu": torch.nn.GELU(approximate="none"),
    "leaky_relu": torch.nn.LeakyReLU(0.01),
}


def torch_net(widths, params, act):
    """torch.nn.Sequential of Linear layers with ``act`` between them, holding ``params``."""
    layers = []
    for l, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        lin = torch.nn.Linear(n_in, n_out)
        with torch.no_grad():
            lin.weight.copy_(t64(params[f"W{l}"].T))  # torch stores (out, in); lossbench (in, out)
            lin.bias.copy_(t64(params[f"b{l}"]))
        layers.append(lin)
        if l < len(widths) - 2:
            layers.append(act)
    return torch.nn.Sequential(*layers)


def model_case(widths, params, act):
    """Output of the net for X and d sum(out * DOUT) / d W_l, b_l (W as (in, out))."""
    net = torch_net(widths, params, act)
    out = net(t64(X))
    (out * t64(DOUT)).sum().backward()
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    grads = {}
    for l, lin in enumerate(linears):
        grads[f"W{l}"] = tolist(lin.weight.grad.T)
        grads[f"b{l}"] = tolist(lin.bias.grad)
    return {"torch": repr(net), "out": tolist(out), "grads": grads}


def mlp_cases(widths, seed):
    params = model_weights(widths, seed)
    cases = [
        {"activation": name, **model_case(widths, params, act)}
        for name, act in ACTIVATIONS.items()
    ]
    return {
        "widths": widths,
        "x": X,
        "dout": DOUT,
        "params": {k: v.tolist() for k, v in params.items()},
        "cases": cases,
    }


def models():
    return mlp_cases([3, 5, 2], seed=7)


def models_two_hidden():
    # hidden widths 5 then 4: backward alternates its two scratch blocks between layers
    return mlp_cases([3, 5, 4, 2], seed=11)


def linear_model():
    widths = [3, 2]
    params = model_weights(widths, seed=13)
    return {
        "widths": widths,
        "x": X,
        "dout": DOUT,
        "params": {k: v.tolist() for k, v in params.items()},
        **model_case(widths, params, None),
    }


# ---------------------------------------------------------------------------------------------
# learning-rate schedules

# (case name, trainer options as lossbench names them, base lr). lossbench's rule (docstring of
# lossbench/training/schedules.py): warm-up lr0 (e + 1) / (W + 1) for e < W, then constant, step
# (StepLR) or cosine (CosineAnnealingLR with T_max = epochs - W, eta_min = min_lr).
SCHEDULE_CASES = [
    ("constant", {"epochs": 5, "lr_schedule": "constant"}, 0.1),
    ("constant_warmup2", {"epochs": 6, "warmup_epochs": 2, "lr_schedule": "constant"}, 0.1),
    ("step", {"epochs": 8, "lr_schedule": "step", "step_size": 2, "gamma": 0.1}, 0.1),
    ("step_warmup2",
     {"epochs": 10, "warmup_epochs": 2, "lr_schedule": "step", "step_size": 3, "gamma": 0.5}, 0.4),
    ("cosine", {"epochs": 10, "lr_schedule": "cosine", "min_lr": 0.01}, 0.1),
    ("cosine_warmup1", {"epochs": 20, "warmup_epochs": 1, "lr_schedule": "cosine",
                        "min_lr": 1e-4}, 0.003),
    ("cosine_warmup3", {"epochs": 13, "warmup_epochs": 3, "lr_schedule": "cosine"}, 0.4),
    ("cosine_warmup4_min_lr",
     {"epochs": 12, "warmup_epochs": 4, "lr_schedule": "cosine", "min_lr": 0.001}, 0.05),
    # one epoch after the warm-up: T_max = 1
    ("cosine_warmup4_of_5",
     {"epochs": 5, "warmup_epochs": 4, "lr_schedule": "cosine", "min_lr": 0.01}, 0.1),
]  # fmt: skip
SCHEDULE_DEFAULTS = {"warmup_epochs": 0, "step_size": 10, "gamma": 0.1, "min_lr": 0.0}


def torch_schedule(opt, tc):
    """torch.optim.lr_scheduler objects for the trainer options ``tc``, and their description."""
    sched = torch.optim.lr_scheduler
    warmup, kind = tc["warmup_epochs"], tc["lr_schedule"]
    if kind == "step":
        main = sched.StepLR(opt, step_size=tc["step_size"], gamma=tc["gamma"])
        text = f"StepLR(step_size={tc['step_size']}, gamma={tc['gamma']})"
    elif kind == "cosine":
        t_max = tc["epochs"] - warmup
        main = sched.CosineAnnealingLR(opt, T_max=t_max, eta_min=tc["min_lr"])
        text = f"CosineAnnealingLR(T_max={t_max}, eta_min={tc['min_lr']})"
    else:
        main = sched.LambdaLR(opt, lr_lambda=lambda epoch: 1.0)
        text = "LambdaLR(lr_lambda=lambda epoch: 1.0)"
    if not warmup:
        return main, text
    warm = sched.LinearLR(
        opt, start_factor=1 / (warmup + 1), end_factor=1.0, total_iters=warmup
    )
    text = (
        f"SequentialLR([LinearLR(start_factor=1/{warmup + 1}, end_factor=1.0, "
        f"total_iters={warmup}), {text}], milestones=[{warmup}])"
    )
    return sched.SequentialLR(opt, [warm, main], milestones=[warmup]), text


def schedules():
    """Every epoch's learning rate (the optimizer's lr while the epoch trains; scheduler.step()
    after each epoch) for each case."""
    cases = []
    for name, options, lr in SCHEDULE_CASES:
        tc = {**SCHEDULE_DEFAULTS, **options}
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        scheduler, text = torch_schedule(opt, tc)
        lrs = []
        for _ in range(tc["epochs"]):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
        cases.append({"name": name, "trainer": tc, "lr": lr, "torch": text, "lrs": lrs})
    return cases


GROUP_TARGET = [[0.5, -1.0], [1.5, 0.25], [-0.5, 0.75], [1.0, 2.0]]
GROUP_CASES = [
    ("sgd", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}),
    ("adam", torch.optim.Adam, {"lr": 0.05, "weight_decay": 0.1}),
    ("adamw", torch.optim.AdamW, {"lr": 0.05, "weight_decay": 0.1}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 0.01, "weight_decay": 0.1}),
    ("adagrad", torch.optim.Adagrad, {"lr": 0.1, "weight_decay": 0.1}),
]


def param_groups():
    """torch's param groups: weights decay, biases (weight_decay=0) do not; 5 steps."""
    widths, steps = [3, 5, 2], 5
    params = model_weights(widths, 7)
    cases = []
    for name, cls, kwargs in GROUP_CASES:
        net = torch_net(widths, params, torch.nn.ReLU())
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        groups = [{"params": [lin.weight for lin in linears]},
                  {"params": [lin.bias for lin in linears], "weight_decay": 0.0}]  # fmt: skip
        opt = cls(groups, **kwargs)
        after = []
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(t64(X)), t64(GROUP_TARGET)).backward()
            opt.step()
            state = {}
            for l, lin in enumerate(linears):
                state[f"W{l}"] = tolist(lin.weight.T)
                state[f"b{l}"] = tolist(lin.bias)
            after.append(state)
        cases.append({"optimizer": name, "options": kwargs, "torch": repr(opt).split("(")[0],
                      "after": after})  # fmt: skip
    return {"widths": widths, "x": X, "target": GROUP_TARGET, "steps": steps,
            "params": {k: v.tolist() for k, v in params.items()}, "cases": cases}  # fmt: skip


DROPOUT_P = [0.1, 0.2, 0.25, 1 / 3, 0.5, 0.7, 0.9]
DROPOUT_X = [0.3, -1.7, 2.25, 0.1, -0.05, 3.3, 1e-3, -12.5]


def dropout():
    """torch.nn.Dropout(p) in training mode: a kept 1.0's value and a row of outputs."""
    torch.manual_seed(0)
    cases = []
    for dtype, label in ((torch.float64, "float64"), (torch.float32, "float32")):
        for p in DROPOUT_P:
            drop = torch.nn.Dropout(p).train()
            ones = drop(torch.ones(4096, dtype=dtype))
            kept = ones[ones != 0]
            assert bool((kept == kept[0]).all())
            cases.append({"dtype": label, "p": p, "kept_value": float(kept[0]),
                          "out": tolist(drop(t64(DROPOUT_X, dtype)))})  # fmt: skip
    return {"x": DROPOUT_X, "cases": cases}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    data = {
        "generator": "benchmarks/make_torch_reference.py",
        "torch_version": torch.__version__,
        "dtype": "float64",
        "losses": losses(),
        "optimizers": optimizers(),
        "models": models(),
        # the loss and optimizer cases again, computed by torch in float32: each value is the
        # float64 spelling of a float32 number; inputs are the same literals, rounded to float32
        "float32": {"losses": losses(torch.float32), "optimizers": optimizers(torch.float32)},
        "schedules": schedules(),
        "models_two_hidden": models_two_hidden(),
        "linear": linear_model(),
        "param_groups": param_groups(),
        "dropout": dropout(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_compact(json.dumps(data, indent=1)) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) with torch {torch.__version__}")


def _compact(text: str) -> str:
    """One line per innermost list (a row of numbers), to keep the file short and readable."""
    return re.sub(
        r"\[\s*([^\[\]{}\"]*?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text
    )


if __name__ == "__main__":
    main()
