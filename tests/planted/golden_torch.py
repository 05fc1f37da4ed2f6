"""torch.optim.RAdam and torch.nn.PoissonNLLLoss on the golden cases of tests/planted/, run by
make_golden.py in an environment with torch (torch and numpy there, not lossbench)."""

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32}
torch.set_default_dtype(torch.float64)  # torch.optim keeps its step count in the default dtype


def source() -> str:
    return f"torch {torch.__version__}"


def radam(case):
    dtype, hp = DTYPES[case["dtype"]], case["options"]
    p = torch.nn.Parameter(torch.tensor(case["inputs"]["params"], dtype=dtype))
    opt = torch.optim.RAdam([p], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"])
    steps = []
    for g in case["inputs"]["grads"]:
        p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
        steps.append(p.detach().numpy().astype("float64"))
    return {"params": steps}


def poisson_nll(case):
    dtype = DTYPES[case["dtype"]]
    x = torch.tensor(case["inputs"]["pred"], dtype=dtype, requires_grad=True)
    value = torch.nn.PoissonNLLLoss(log_input=True)(x, torch.tensor(case["inputs"]["target"],
                                                                    dtype=dtype))  # fmt: skip
    value.backward()
    return {"loss": value.item(), "grad": x.grad.numpy().astype("float64")}
