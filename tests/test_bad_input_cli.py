"""Bad input through the command line, as a user meets it: exit 2, one paragraph naming the
value and the fix, no traceback, and nothing left on disk (no run directory, no MLflow store).

The processes run a few at a time (a module fixture starts them all), so the ~30 cases cost
a few seconds of the suite, not a minute.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _write_inputs(folder: Path) -> None:
    """Every bad file the cases read, written into ``folder``."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    y = (X[:, 0] > 0).astype(int)
    np.savez(folder / "no_y_val.npz", X=X, y=y, X_val=X[:10])
    np.savez(folder / "short_y_val.npz", X=X, y=y, X_val=X[:10], y_val=y[:5])
    np.savez(folder / "object.npz", X=X.astype(object), y=y)
    np.savez(folder / "string.npz", X=X.astype(str), y=y)
    np.savez(folder / "complex.npz", X=X.astype(complex), y=y)
    np.savez(folder / "empty.npz", X=np.zeros((0, 3)), y=np.zeros(0))
    np.savez(folder / "one_class.npz", X=X, y=np.zeros(50))
    np.save(folder / "array.npy", X)
    (folder / "broken.npz").write_bytes((folder / "no_y_val.npz").read_bytes()[:300])
    (folder / "text.npz").write_text("X,y\n1,2\n")
    (folder / "one_row.csv").write_text("a,b,label\n1,2,0\n")
    (folder / "one_row_per_class.csv").write_text("a,label\n1,0\n2,1\n3,2\n")
    (folder / "header_only.csv").write_text("a,b,label\n")
    (folder / "repeated_target.csv").write_text(
        "a,label,label\n" + "".join(f"{i},{i % 2},{i % 2}\n" for i in range(20))
    )
    (folder / "many_integers.csv").write_text(
        "a,label\n" + "".join(f"{i},{i * 7}\n" for i in range(200))
    )
    (folder / "huge_value.csv").write_text(
        "a,b,label\n" + "".join(f"{i},{1e39 if i == 3 else i},{i % 2}\n" for i in range(20))
    )
    (folder / "huge_square.csv").write_text(
        "a,b,label\n" + "".join(f"{i},{1e300 if i == 3 else i},{i % 2}\n" for i in range(20))
    )
    # digits (64 features, 10 classes) with model.hidden=[8]
    shapes = {"W0": (64, 8), "b0": (8,), "W1": (8, 10), "b1": (10,)}
    weights = {k: np.zeros(s) for k, s in shapes.items()}
    np.savez(folder / "nan_weights.npz", **{**weights, "W0": np.full((64, 8), np.nan)})
    np.savez(folder / "inf_weights.npz", **{**weights, "b1": np.full(10, np.inf)})
    np.savez(folder / "complex_weights.npz", **{**weights, "W1": np.zeros((8, 10), complex)})
    np.savez(folder / "wrong_shape_weights.npz", **{**weights, "W0": np.zeros((64, 9))})
    np.savez(folder / "column_labels.npz", X=X, y=y[:, None])
    np.savez(folder / "one_hot_labels.npz", X=X, y=np.eye(2)[y])
    np.savez(folder / "unseen_val_class.npz", X=X, y=y, X_val=X[:10], y_val=np.full(10, 2))
    (folder / "a_folder").mkdir()
    (folder / "huge_everywhere.csv").write_text(  # in float64, unscaled: the logits overflow
        "a,b,c,label\n" + "".join(f"{(-1) ** i * 1e308},1e308,1e308,{i % 2}\n" for i in range(40))
    )


NPZ, CSV, INIT = ["data=npz"], ["data=csv", "data.target=label"], ["model.hidden=[8]"]

# id: (overrides, what stderr must say)
CASES = {
    "npz_x_val_without_y_val": (
        [*NPZ, "data.path=no_y_val.npz"], "the validation set has X_val but no y_val"),
    "npz_y_val_shorter_than_x_val": (
        [*NPZ, "data.path=short_y_val.npz"], "y_val has shape (5,) but X_val has 10 rows"),
    "npz_object_array": ([*NPZ, "data.path=object.npz"], "the array X holds Python objects"),
    "npz_string_array": ([*NPZ, "data.path=string.npz"], "the array X is a string array"),
    "npz_complex_array": ([*NPZ, "data.path=complex.npz"], "the array X is a complex array"),
    "npz_empty_arrays": ([*NPZ, "data.path=empty.npz"], "the features X have no rows"),
    "npz_broken_zip": ([*NPZ, "data.path=broken.npz"], "is not a valid .npz file"),
    "npz_is_a_npy_file": ([*NPZ, "data.path=array.npy"], "is a .npy file (one array"),
    "npz_is_a_text_file": ([*NPZ, "data.path=text.npz"], "is not an .npz file: it holds text"),
    "single_class_target": ([*NPZ, "data.path=one_class.npz"], "every row has the same class"),
    "empty_validation_set_one_row_csv": (
        [*CSV, "data.path=one_row.csv", "data.task=regression"],
        "the training set is empty: the data has 1 rows"),
    "empty_validation_set_one_row_per_class": (
        [*CSV, "data.path=one_row_per_class.csv"],
        "the validation set is empty: the data has 3 rows and 3 of its 3 classes have only one"),
    "header_only_csv": ([*CSV, "data.path=header_only.csv"], "has a header (a, b, label) but no"),
    "repeated_target_column": (
        [*CSV, "data.path=repeated_target.csv"], "the header names 'label' more than once"),
    "many_integer_classes": (
        [*CSV, "data.path=many_integers.csv"],
        "holds 200 distinct integer values, more than 50, so data.task=auto took it as a "
        "regression target). Fix: use loss=mse, loss=mae or loss=huber, or a classification "
        "dataset, or pass data.task=classification"),
    "value_overflows_float32": (
        [*CSV, "data.path=huge_value.csv", "data.standardize=false"],
        "the features in column 'b' hold values too large for float32 (at most 3.4e+38); this "
        "is the data, not the learning rate. Fix: rescale those columns (e.g. divide by a power "
        "of ten), or pass trainer.dtype=float64."),
    "value_overflows_standardising": (
        [*CSV, "data.path=huge_square.csv", "trainer.dtype=float64"],
        "column 'b' hold values too large to standardise"),
    "init_from_nan_weights": (
        [*INIT, "model.init_from=nan_weights.npz"], "W0 has 512 NaN or infinite values"),
    "init_from_inf_weights": (
        [*INIT, "model.init_from=inf_weights.npz"], "b1 has 10 NaN or infinite values"),
    "init_from_complex_weights": (
        [*INIT, "model.init_from=complex_weights.npz"], "W1 is a complex array"),
    "init_from_wrong_shape": (
        [*INIT, "model.init_from=wrong_shape_weights.npz"], "W0: file (64, 9), model (64, 8)"),
    "init_from_npy_file": (
        [*INIT, "model.init_from=array.npy"], "model.init_from='array.npy' is a .npy file"),
    "init_from_text_file": (
        [*INIT, "model.init_from=text.npz"], "model.init_from='text.npz' is not an .npz file"),
    "init_from_broken_zip": (
        [*INIT, "model.init_from=broken.npz"], "model.init_from='broken.npz' is not a valid"),
    "negative_seed": (["seed=-1"], "seed=-1 is not allowed: it must be >= 0"),
    "learning_rate_not_a_number": (
        ["optimizer.lr=fast"],
        "optimizer.lr=fast is not allowed: optimizer.lr must be a number. Fix: pass e.g. "
        "optimizer.lr=0.001."),
    "learning_rate_not_a_number_before_the_optimizer": (
        ["optimizer.lr=fast", "optimizer=sgd"],
        "optimizer.lr=fast is not allowed: optimizer.lr must be a number. Fix: pass e.g. "
        "optimizer.lr=0.01."),
    "interpolation_of_a_missing_key": (
        ["optimizer.lr=${x}"],
        "optimizer.lr does not resolve: Interpolation key 'x' not found. Fix: an interpolation"),
    "model_too_large_for_memory": (
        ["model.hidden=[100000,100000]"],
        "model=mlp (10,007,600,010 parameters for 64 features and 10 outputs"),
    "register_model_name_with_a_slash": (
        ["tracking.register_model=team/digits"],
        "tracking.register_model='team/digits' is not a registered model name"),
    "learning_rate_infinite": (
        ["optimizer.lr=inf"], "optimizer.lr=inf is not allowed: it must be a finite number > 0"),
    "tracking_experiment_empty": (
        ["tracking.experiment=''"], "tracking.experiment='' is not allowed: it names the MLflow"),
    "tracking_retry_seconds_negative": (
        ["tracking.retry_seconds=-1"], "tracking.retry_seconds=-1 is not allowed: it must be"),
    "validation_class_never_seen_in_training": (
        [*NPZ, "data.path=unseen_val_class.npz"],
        "the validation set has class '2' (10 rows), which the training set never has"),
    "npz_y_a_column_of_class_labels": (
        [*NPZ, "data.path=column_labels.npz"],
        "y has shape (50, 1): one column of 2 distinct integers (class labels saved as a column"),
    "npz_y_one_hot": (
        [*NPZ, "data.path=one_hot_labels.npz"],
        "y has shape (50, 2): one-hot rows (class labels saved one-hot"),
    "data_path_is_a_directory": (
        [*CSV, "data.path=a_folder"], "data.path='a_folder' is a directory, not a file"),
    "data_path_is_a_device": (
        [*NPZ, "data.path=/dev/null"], "data.path='/dev/null' is not a regular file (a device"),
    "override_with_unquoted_unicode": (
        ["tracking.run_name=héllo"],
        "cannot read the override 'tracking.run_name=héllo': the character 'é' needs quotes"),
    "override_with_unquoted_tilde": (
        ["tracking.run_name=~me"],
        "cannot read the override 'tracking.run_name=~me': the character '~' needs quotes"),
    "override_with_unquoted_bang": (
        ["tracking.run_name=hi!"],
        "cannot read the override 'tracking.run_name=hi!': the character '!' needs quotes"),
    "disabled_plugin_misspelled": (
        [], "LOSSBENCH_DISABLE_PLUGINS names 'lossses', which is not a plugin",
        {"LOSSBENCH_DISABLE_PLUGINS": "lossses"}),
    "builtin_losses_disabled": (
        [], "loss=cross_entropy (the default) is not a known loss: no loaded plugin registers it "
        "(LOSSBENCH_DISABLE_PLUGINS=losses disabled the built-in losses)",
        {"LOSSBENCH_DISABLE_PLUGINS": "losses"}),
    "lr_find_steps_absurd": (
        ["lr_find", "--steps", "100000000000"],
        "lr_find --steps 100000000000 is not allowed: it must be between 10 and 1000000"),
    "lr_find_output_dir_is_a_file": (
        ["lr_find", "--steps", "20", "--output-dir", "one_row.csv"],
        "lr_find --output-dir 'one_row.csv' is a file, not a folder"),
    "lr_find_with_a_hydra_override": (
        ["lr_find", "--steps", "20", "hydra.run.dir=x"],
        "lr_find does not take hydra.run.dir=x: it is not a Hydra run"),
    "lr_find_loss_not_finite_from_the_first_step": (
        ["lr_find", "--steps", "20", *CSV, "data.path=huge_everywhere.csv",
         "data.standardize=false", "trainer.dtype=float64"],
        "the loss was not finite at the first step of lr_find"),
    "replay_of_a_path_that_does_not_exist": (
        ["replay", "no/such/run"], "replay no/such/run: no such folder"),
    "mistyped_subcommand": (
        ["plugin"], "unknown command 'plugin'. Did you mean 'plugins'? Choices: plugins, warmup"),
}  # fmt: skip


def _run(folder: Path, overrides: list[str], extra_env=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LOSSBENCH_LOAD_PLUGINS"] = ""
    env.update(extra_env or {})
    if overrides and "=" not in overrides[0]:  # a subcommand (or a mistyped one): first
        command = overrides
    else:
        command = ["trainer.progress=false", "trainer.epochs=2", *overrides]
    return subprocess.run(
        # the default tracking (./mlflow.db) is on: a refused run must not create the store
        [sys.executable, "-m", "lossbench", *command],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Each case in a folder of its own holding only the input files: (folder, files before,
    the finished process)."""
    inputs = tmp_path_factory.mktemp("inputs")
    _write_inputs(inputs)
    jobs = {}
    for name in CASES:
        folder = tmp_path_factory.mktemp(name)
        for f in inputs.iterdir():
            if f.is_dir():
                (folder / f.name).mkdir()
            else:
                (folder / f.name).write_bytes(f.read_bytes())
        jobs[name] = (folder, sorted(p.name for p in folder.iterdir()))
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = {n: pool.submit(_run, jobs[n][0], *CASES[n][::2]) for n in CASES}
        return {n: (*jobs[n], done[n].result()) for n in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_paragraph_and_leaves_nothing(results, name):
    folder, before, r = results[name]
    message = CASES[name][1]
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr + r.stdout
    err = r.stderr.strip()
    assert err.startswith("lossbench: error: ") and "\n" not in err, err  # one paragraph
    assert message in err
    assert "Fix:" in err
    assert sorted(p.name for p in folder.iterdir()) == before, "the refused run left files"
