"""residual_mlp.py's model in PyTorch, gradients by autograd, on the golden cases: run by
make_golden.py in an environment with torch (torch and numpy there, not lossbench)."""

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def source() -> str:
    return f"torch {torch.__version__}: Linear layers, h + s tanh(Linear(h)) blocks, autograd"


def residual_mlp(case):
    dtype, t, hp = DTYPES[case["dtype"]], case["inputs"]["tensors"], case["options"]
    names = ["in", *(f"block{k}" for k in range(1, hp["blocks"] + 1)), "out"]
    weights = {n: torch.tensor(t[f"W_{n}"], dtype=dtype, requires_grad=True) for n in names}
    biases = {n: torch.tensor(t[f"b_{n}"], dtype=dtype, requires_grad=True) for n in names}
    h = torch.tensor(case["inputs"]["x"], dtype=dtype) @ weights["in"] + biases["in"]
    for n in names[1:-1]:
        h = h + hp["residual_scale"] * torch.tanh(h @ weights[n] + biases[n])
    out = h @ weights["out"] + biases["out"]
    (out * torch.tensor(case["inputs"]["dout"], dtype=dtype)).sum().backward()
    grads = {f"W_{n}": weights[n].grad for n in names} | {f"b_{n}": biases[n].grad for n in names}
    return {"out": out.detach().numpy().astype("float64"),
            "grads": {k: v.numpy().astype("float64") for k, v in grads.items()}}  # fmt: skip
