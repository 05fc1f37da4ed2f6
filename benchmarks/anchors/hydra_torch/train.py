"""The anchor trial: digits, an MLP 64-128-10 (ReLU), cross-entropy, Adam, batch 64, float32,
a stratified 80/20 split standardised on the training part, one validation pass per epoch,
MLflow per-epoch metrics. Returns the last epoch's validation loss to hydra-optuna-sweeper.

Run by benchmarks/sweep_vs_hydra.py in its own venv (hydra-optuna-sweeper needs optuna<3,
lossbench needs optuna>=5); see requirements.txt.
"""

from __future__ import annotations

import json
import time

import hydra
import mlflow
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def data(seed: int):
    X, y = load_digits(return_X_y=True)
    Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=0.2, stratify=y, random_state=seed)
    mean, std = Xtr.mean(0), Xtr.std(0)
    std[std == 0] = 1.0
    f = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    return f(Xtr), torch.tensor(ytr), f(Xva), torch.tensor(yva)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg) -> float:
    start = time.time()
    torch.manual_seed(cfg.seed)
    Xtr, ytr, Xva, yva = data(cfg.seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, cfg.hidden), torch.nn.ReLU(), torch.nn.Linear(cfg.hidden, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    if cfg.mlflow_uri:
        mlflow.set_tracking_uri(cfg.mlflow_uri)
        mlflow.set_experiment("anchor")
        mlflow.start_run(run_name=f"lr{cfg.lr:g}")
        mlflow.log_params({"lr": cfg.lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size})
    gen = torch.Generator().manual_seed(cfg.seed)
    in_epochs, val = 0.0, float("nan")
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(Xtr), generator=gen)
        total = 0.0
        for i in range(0, len(Xtr), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val = loss_fn(model(Xva), yva).item()
        in_epochs += time.perf_counter() - t0
        if cfg.mlflow_uri:
            mlflow.log_metrics({"train_loss": total / len(Xtr), "val_loss": val}, step=epoch)
    if cfg.mlflow_uri:
        mlflow.end_run()
    if cfg.timeline:
        with open(cfg.timeline, "a") as f:
            f.write(json.dumps({"start": start, "end": time.time(), "epochs": in_epochs}) + "\n")
    return val if np.isfinite(val) else 1e9


if __name__ == "__main__":
    main()
