"""The focal losses in PyTorch on the golden cases, with torch's autograd for the gradients; run
by make_golden.py in an environment with torch (torch and numpy there, not lossbench).
``binary_focal`` is torchvision.ops.sigmoid_focal_loss's code (reduction "mean")."""

import torch
import torch.nn.functional as F

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def source() -> str:
    return f"torch {torch.__version__}: focal losses in torch ops, gradients by autograd"


def _value_and_grad(case, loss_fn):
    dtype = DTYPES[case["dtype"]]
    x = torch.tensor(case["inputs"]["pred"], dtype=dtype, requires_grad=True)
    target = torch.tensor(case["inputs"]["target"], dtype=dtype)
    value = loss_fn(x, target, case["options"])
    value.backward()
    return {"loss": value.item(), "grad": x.grad.numpy().astype("float64")}


def _focal(x, target, hp):
    """-alpha (1 - p_t)^gamma log p_t over softmax probabilities, mean over rows."""
    logp = F.log_softmax(x, dim=1)
    logpt = logp.gather(1, target.long())[:, 0]
    pt = logpt.exp()
    return (-hp["alpha"] * (1 - pt) ** hp["gamma"] * logpt).mean()


def _binary_focal(x, y, hp):
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** hp["gamma"])
    if hp["alpha"] is not None:
        loss = (hp["alpha"] * y + (1 - hp["alpha"]) * (1 - y)) * loss
    return loss.mean()


def focal(case):
    return _value_and_grad(case, _focal)


def binary_focal(case):
    return _value_and_grad(case, _binary_focal)
