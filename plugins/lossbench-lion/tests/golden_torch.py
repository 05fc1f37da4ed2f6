"""Lion in PyTorch on the golden cases, run by make_golden.py in an environment with torch (it
needs torch and numpy there, not lossbench). torch.optim has no Lion: this is the update of the
paper's Algorithm 2 as lion-pytorch's ``update_fn`` writes it, with torch's in-place ops."""

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def source() -> str:
    return f"torch {torch.__version__}: Lion (Chen et al. 2023, Algorithm 2) in torch ops"


def lion(case):
    """The parameters after every step."""
    dtype, hp = DTYPES[case["dtype"]], case["options"]
    lr, beta1, beta2, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"]
    p = torch.tensor(case["inputs"]["params"], dtype=dtype)
    exp_avg = torch.zeros_like(p)
    steps = []
    for g in case["inputs"]["grads"]:
        grad = torch.tensor(g, dtype=dtype)
        p.mul_(1 - lr * wd)
        update = exp_avg.clone().mul_(beta1).add(grad, alpha=1 - beta1).sign_()
        p.add_(update, alpha=-lr)
        exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)
        steps.append(p.numpy().astype("float64"))
    return {"params": steps}
