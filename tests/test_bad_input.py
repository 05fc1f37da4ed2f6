"""Bad input: a clear one-paragraph error naming the value, the choices and the fix."""

import numpy as np
import pytest

import lossbench
from conftest import TINY
from lossbench.errors import ConfigError, DataError, LossbenchError

CASES = [
    (
        ["loss=focal"],
        ConfigError,
        "loss='focal' is not a known loss. Available: bce, cross_entropy, huber, mae, mse",
    ),
    (["optimizer=adamax"], ConfigError, "Available: adagrad, adam, adamw, rmsprop, sgd"),
    (["model=cnn"], ConfigError, "Available: linear, mlp"),
    (
        ["data=mnist"],
        ConfigError,
        "data='mnist' is not a known dataset. Available: blobs, breast_cancer, csv",
    ),
    (
        ["data=digits", "loss=bce"],
        ConfigError,
        "loss=bce is for two-class data, but this dataset has 10 classes",
    ),
    (
        ["data=diabetes", "loss=cross_entropy"],
        ConfigError,
        "needs class labels, but this dataset has a continuous",
    ),
    (
        ["optimizer.lr=0"],
        ConfigError,
        "optimizer.lr=0.0 is not allowed: it must be a finite number > 0",
    ),
    (["optimizer=sgd", "optimizer.lr=-1"], ConfigError, "optimizer.lr=-1.0 is not allowed"),
    (
        ["trainer.epochs=0"],
        ConfigError,
        "trainer.epochs=0 is not allowed: it must be a positive integer",
    ),
    (["trainer.batch_size=-4"], ConfigError, "trainer.batch_size=-4"),
    (
        ["data.val_fraction=1.5"],
        ConfigError,
        "data.val_fraction=1.5 is not allowed: it must lie strictly between 0 and 1",
    ),
    (["data.val_fraction=0"], ConfigError, "data.val_fraction=0.0"),
    (["trainer.dtype=float16"], ConfigError, "Choices: float32, float64"),
    (["schedule=exp"], ConfigError, "Available: constant, cosine, step"),
    (["~seed"], ConfigError, "~seed deletes seed, which every run reads (a key of the config's "
     "schema); it cannot be left out. Fix: give it a value instead (seed=0), or drop ~seed."),
    (["~trainer.epochs"], ConfigError, "Fix: give it a value instead (trainer.epochs=50)"),
    (["~loss"], ConfigError, "Fix: give it a value instead (loss=cross_entropy), or drop ~loss"),
    (["~tracking.tags.x"], ConfigError, "~tracking.tags.x deletes tracking.tags.x, which the "
     "config does not have. Fix: drop ~tracking.tags.x"),
    (["trainer.lr_schedule=cosine"], ConfigError, "has moved: learning-rate schedules are the "
     "config group schedule now"),
    (["trainer.min_lr=0.01"], ConfigError, "Fix: write schedule=cosine schedule.min_lr=0.01."),
    (["schedule=step", "schedule.step_size=0"], ConfigError, "schedule.step_size=0 is not allowed"),
    (["schedule=step", "schedule.gamma=0"], ConfigError, "schedule.gamma=0.0 is not allowed"),
    (["model.activation=swish"], ConfigError, "Choices: relu, tanh, sigmoid, gelu, leaky_relu"),
    (["model.hidden=[64,0]"], ConfigError, "every width must be a positive integer"),
    (
        ["trainer.epochs=many"],
        ConfigError,
        "trainer.epochs=many is not allowed: trainer.epochs must be an integer. Fix: pass e.g. "
        "trainer.epochs=50.",
    ),
    (["optimizer.lr=fast"], ConfigError, "optimizer.lr=fast is not allowed: optimizer.lr must be"),
    (
        ["optimizer.lrr=0.1"],
        ConfigError,
        "optimizer.lrr is not an option of optimizer adam. Its keys: lr, beta1, beta2, eps, "
        "weight_decay, amsgrad. Did you mean optimizer.lr?",
    ),
    (["+optimizer.lrr=0.1"], ConfigError, "optimizer.lrr is not an option of optimizer adam"),
    (["seed=abc"], ConfigError, "seed=abc is not allowed: seed must be an integer"),
    (["trainer.early_stopping.monitor=val_acc"], ConfigError, "Did you mean val_accuracy?"),
    (["loss=huber", "loss.delta=-1"], ConfigError, "loss.delta=-1.0"),
    (["optimizer=adam", "optimizer.beta1=1.2"], ConfigError, "optimizer.beta1=1.2"),
    (["model.init_from=/no/such/file.npz"], ConfigError, "model.init_from='/no/such/file.npz'"),
    (["data=csv"], ConfigError, "data.path must be set for csv. Fix: pass data.path="),
    (["data=csv", "data.path=/no/such.csv"], DataError, "data.path='/no/such.csv': no such file"),
]


@pytest.mark.parametrize("overrides,error,message", CASES, ids=lambda v: str(v)[:40])
def test_bad_config_is_a_clear_error(pm, overrides, error, message):
    with pytest.raises(error) as info:
        lossbench.train(overrides=[*TINY, *overrides])
    text = str(info.value)
    assert message in text
    assert "Fix" in text or "Available" in text or "Choices" in text or "do not fit" in text


@pytest.fixture
def csv_dir(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["a,b,label"] + [f"{rng.normal():.3f},{rng.normal():.3f},{i % 2}" for i in range(40)]
    (tmp_path / "ok.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "text.csv").write_text("a,b,label\n1,x,0\n2,y,1\n")
    (tmp_path / "holes.csv").write_text("a,b,label\n1,,0\n2,3,1\n")
    (tmp_path / "other.csv").write_text("a,b,c\n1,2,3\n")
    return tmp_path


@pytest.mark.parametrize(
    "file,extra,message",
    [
        ("ok.csv", ["data.target=y"], "data.target='y' is not a column of"),
        ("text.csv", [], "feature columns b are not numeric"),
        ("holes.csv", [], "columns b have missing values"),
    ],
)
def test_bad_csv(pm, csv_dir, file, extra, message):
    with pytest.raises(DataError, match=message):
        lossbench.train(
            overrides=[
                *TINY,
                "data=csv",
                f"data.path={csv_dir / file}",
                "data.target=label",
                *extra,
            ]
        )


def test_good_csv_with_separate_validation_file(pm, csv_dir):
    run = lossbench.train(
        overrides=[
            *TINY,
            "data=csv",
            f"data.path={csv_dir / 'ok.csv'}",
            "data.target=label",
            f"data.val_path={csv_dir / 'ok.csv'}",
        ]
    )
    assert run.dataset.task == "classification" and len(run.dataset.X_val) == 40


def test_errors_are_lossbench_errors_with_exit_code_2():
    assert issubclass(ConfigError, LossbenchError) and ConfigError.exit_code == 2
