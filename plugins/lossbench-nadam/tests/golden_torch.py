"""torch.optim.NAdam on the golden cases: run by make_golden.py in an environment with torch
(it needs torch and numpy there, not lossbench)."""

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32}
# torch.optim keeps an optimizer's step count and running products (NAdam's mu_product) in the
# default dtype: float32 unless set, which puts float32 rounding (1e-7) into a float64 run. The
# plugin keeps them in float64 (scalar state), as torch does with this:
torch.set_default_dtype(torch.float64)


def source() -> str:
    return f"torch {torch.__version__}: torch.optim.NAdam"


def nadam(case):
    """The parameters after every step (lossbench's beta1, beta2 are torch's betas)."""
    dtype, hp = DTYPES[case["dtype"]], case["options"]
    p = torch.nn.Parameter(torch.tensor(case["inputs"]["params"], dtype=dtype))
    opt = torch.optim.NAdam(
        [p], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
        weight_decay=hp["weight_decay"], momentum_decay=hp["momentum_decay"],
        decoupled_weight_decay=hp["decoupled_weight_decay"],
    )  # fmt: skip
    steps = []
    for g in case["inputs"]["grads"]:
        p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
        steps.append(p.detach().numpy().astype("float64"))
    return {"params": steps}
