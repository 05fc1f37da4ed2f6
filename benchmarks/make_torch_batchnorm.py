"""Write tests/data/torch_batchnorm.json: the built-in MLP with ``model.batch_norm=true`` as
PyTorch trains it, so tests/test_buffers.py holds the fused and the slow path to PyTorch without
importing torch (the companion of benchmarks/make_torch_reference.py).

    pip install torch==2.13.0
    python benchmarks/make_torch_batchnorm.py

The network is torch.nn.Sequential(Linear, BatchNorm1d, act, Linear, BatchNorm1d, act, Linear)
with widths 4-6-5-3, lossbench's ``mlp`` with ``model.hidden=[6,5] model.batch_norm=true``:
batch norm after each hidden Linear, before the activation. Each case trains it for two epochs
over 20 fixed rows in order, minibatches of 8, 8 and 4 rows (six steps, so the unbiased
variance's m / (m - 1) is taken for two batch sizes), on MSELoss (mean), in training mode, with
a torch.optim optimizer; then evaluates it (``net.eval()``) on 6 other rows. Stored per case and
dtype (float64, and float32: the same literals rounded to float32, torch computing in float32):
every step's loss, every tensor after every step (the Linear weights transposed to lossbench's
(in, out), BatchNorm1d's weight, bias, running_mean and running_var), and the evaluation
outputs.

The Linear biases of the hidden layers have an exact gradient of 0 while training (batch norm
subtracts the batch mean); torch's autograd gives rounding noise, which Adam divides by its own
square root into steps of about lr, so in the Adam and AdamW cases they are frozen
(``requires_grad_(False)``: their exact gradient, which lossbench's kernels write). The SGD case
keeps them trainable: weight decay moves them and the noise, times lr, is below float32's
rounding.

Cases: SGD (momentum and weight decay, which torch applies to BatchNorm1d's weight and bias and
never to its buffers), Adam with another momentum and eps of batch norm and tanh, and AdamW
with two parameter groups: the Linear weights decayed, every 1-D parameter (the biases and
batch norm's weight and bias) with weight_decay=0, which is ``model.decay_biases=false``.
Deterministic: re-running it with the same torch version reproduces the file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from make_torch_reference import _compact  # one file layout for both (this folder)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "torch_batchnorm.json"

torch.set_default_dtype(torch.float64)  # torch.optim's step counts in double, as lossbench's

WIDTHS = [4, 6, 5, 3]
BATCH = 8
EPOCHS = 2
CASES = [
    {"name": "sgd", "optimizer": "sgd", "activation": "relu", "decay_biases": True,
     "bn_momentum": 0.1, "bn_eps": 1e-5, "frozen": [],
     "options": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}},
    {"name": "adam", "optimizer": "adam", "activation": "tanh", "decay_biases": True,
     "bn_momentum": 0.3, "bn_eps": 1e-3, "frozen": ["b0", "b1"], "options": {"lr": 0.01}},
    {"name": "adamw_no_decay_1d", "optimizer": "adamw", "activation": "relu",
     "decay_biases": False, "bn_momentum": 0.1, "bn_eps": 1e-5, "frozen": ["b0", "b1"],
     "options": {"lr": 0.01, "weight_decay": 0.1}},
]  # fmt: skip
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
ACTIVATIONS = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}


def data() -> dict:
    """Rows off-centre and of unequal scales (so normalising matters), targets, eval rows."""
    rng = np.random.default_rng(21)
    scale, shift = np.array([1.0, 3.0, 0.5, 2.0]), np.array([0.5, -2.0, 1.0, 0.0])
    x = (rng.normal(size=(20, 4)) * scale + shift).round(4)
    y = rng.normal(size=(20, 3)).round(4)
    x_eval = (rng.normal(size=(6, 4)) * scale + shift).round(4)
    return {"x": x, "y": y, "x_eval": x_eval}


def initial_params() -> dict:
    """W_l (in, out) from U(-1, 1), b_l from U(-0.5, 0.5); gamma from U(0.5, 1.5), beta from
    U(-0.5, 0.5) (torch starts them at 1 and 0: other values show each is read); the running
    statistics start as torch starts them, 0 and 1."""
    rng = np.random.default_rng(7)
    params = {}
    for l, (n_in, n_out) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:], strict=True)):
        params[f"W{l}"] = rng.uniform(-1, 1, size=(n_in, n_out)).round(4)
        params[f"b{l}"] = rng.uniform(-0.5, 0.5, size=n_out).round(4)
    for l, n in enumerate(WIDTHS[1:-1]):
        params[f"gamma{l}"] = rng.uniform(0.5, 1.5, size=n).round(4)
        params[f"beta{l}"] = rng.uniform(-0.5, 0.5, size=n).round(4)
        params[f"running_mean{l}"] = np.zeros(n)
        params[f"running_var{l}"] = np.ones(n)
    return params


def net_of(params: dict, case: dict, dtype) -> tuple:
    """(the Sequential holding ``params`` in ``dtype``, its Linear layers, its BatchNorm1d)."""
    linears, norms, layers = [], [], []
    hidden = len(WIDTHS) - 2
    for l, (n_in, n_out) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:], strict=True)):
        lin = torch.nn.Linear(n_in, n_out, dtype=dtype)
        with torch.no_grad():  # torch stores (out, in); lossbench (in, out)
            lin.weight.copy_(torch.tensor(params[f"W{l}"].T))
            lin.bias.copy_(torch.tensor(params[f"b{l}"]))
        linears.append(lin)
        layers.append(lin)
        if l < hidden:
            bn = torch.nn.BatchNorm1d(n_out, eps=case["bn_eps"], momentum=case["bn_momentum"],
                                      dtype=dtype)  # fmt: skip
            with torch.no_grad():
                bn.weight.copy_(torch.tensor(params[f"gamma{l}"]))
                bn.bias.copy_(torch.tensor(params[f"beta{l}"]))
                bn.running_mean.copy_(torch.tensor(params[f"running_mean{l}"]))
                bn.running_var.copy_(torch.tensor(params[f"running_var{l}"]))
            norms.append(bn)
            layers += [bn, ACTIVATIONS[case["activation"]]()]
    return torch.nn.Sequential(*layers), linears, norms


def tensors(linears, norms) -> dict:
    out = {}
    for l, lin in enumerate(linears):
        out[f"W{l}"] = tolist(lin.weight.T)
        out[f"b{l}"] = tolist(lin.bias)
    for l, bn in enumerate(norms):
        for mine, theirs in (("gamma", "weight"), ("beta", "bias"),
                             ("running_mean", "running_mean"), ("running_var", "running_var")):
            out[f"{mine}{l}"] = tolist(getattr(bn, theirs))  # fmt: skip
    return out


def tolist(t):
    return t.detach().cpu().numpy().astype(np.float64).tolist()


def train_case(case: dict, dtype) -> dict:
    """Six steps in training mode, then the evaluation outputs (see the module)."""
    d, params = data(), initial_params()
    net, linears, norms = net_of(params, case, dtype)
    for l, lin in enumerate(linears):
        if f"b{l}" in case["frozen"]:  # an exact gradient of 0 (see the module)
            lin.bias.requires_grad_(False)
    kwargs = dict(case["options"])
    if case["decay_biases"]:
        groups = [p for p in net.parameters() if p.requires_grad]
    else:  # decay_biases=false: every 1-D parameter without weight decay
        trained = [p for p in net.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trained if p.ndim > 1]},
                  {"params": [p for p in trained if p.ndim == 1], "weight_decay": 0.0}]
    opt = OPTIMIZERS[case["optimizer"]](groups, **kwargs)
    x, y = torch.tensor(d["x"], dtype=dtype), torch.tensor(d["y"], dtype=dtype)
    net.train()
    losses, after = [], []
    for _ in range(EPOCHS):
        for start in range(0, len(x), BATCH):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x[start : start + BATCH]),
                                                y[start : start + BATCH])  # fmt: skip
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            after.append(tensors(linears, norms))
    net.eval()
    with torch.no_grad():
        eval_out = tolist(net(torch.tensor(d["x_eval"], dtype=dtype)))
    return {"losses": losses, "after": after, "eval_out": eval_out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    d = data()
    cases = []
    for case in CASES:
        for dtype, label in ((torch.float64, "float64"), (torch.float32, "float32")):
            cases.append({**case, "dtype": label, **train_case(case, dtype)})
    out = {
        "generator": "benchmarks/make_torch_batchnorm.py",
        "torch_version": torch.__version__,
        "widths": WIDTHS,
        "batch": BATCH,
        "epochs": EPOCHS,
        "x": d["x"].tolist(),
        "y": d["y"].tolist(),
        "x_eval": d["x_eval"].tolist(),
        "params": {k: v.tolist() for k, v in initial_params().items()},
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_compact(json.dumps(out, indent=1)) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) with torch {torch.__version__}")


if __name__ == "__main__":
    main()
