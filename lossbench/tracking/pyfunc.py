"""The loader of a run's MLflow model (``python_function`` flavour, loader-module workflow):
``mlflow.pyfunc.load_model("runs:/RUN_ID/model")`` calls ``_load_pyfunc(data_path)`` here.

The model's data is a ``lossbench.training.predict.Predictor`` folder (weights, layout,
standardisation, class names). Prediction is the model spec's NumPy ``reference_forward``, so
loading needs lossbench and the plugin that registered the model (the model's requirements
name both) but never compiles anything. Input: a 2-D array in the training column order, or a
DataFrame of the training columns in that order; a row with a NaN or an infinity is refused
(MLflow's server answers 400). The model's signature is a float64 tensor (so that arrays work),
and MLflow's schema enforcement turns a DataFrame into an array before ``predict`` sees it:
through ``mlflow.pyfunc`` (and REST) the column order decides, the names are not checked; only
``load(folder).predict`` checks them (any order; missing or extra columns are an error). Output:
a DataFrame, ``prob_<class>`` columns and ``label`` for classification (``score_<class>`` for
losses trained on one-hot values), ``value`` (or ``value_<i>``) for regression.
"""

from __future__ import annotations

import numpy as np

from lossbench.errors import ConfigError
from lossbench.plugins import get_plugin_manager
from lossbench.training.predict import Predictor


class LossbenchModel:
    """What ``mlflow.pyfunc`` wraps: ``predict(model_input, params=None)``."""

    def __init__(self, predictor: Predictor, forward) -> None:
        self.predictor = predictor
        self.forward = forward

    def rows(self, model_input) -> np.ndarray:
        """The input as a (rows, features) float64 array in the training column order."""
        names = self.predictor.feature_names
        columns = getattr(model_input, "columns", None)
        if columns is None:
            return np.asarray(model_input, dtype=np.float64)
        columns = [str(c) for c in columns]
        if columns == [str(i) for i in range(len(columns))]:
            return model_input.to_numpy(dtype=np.float64)  # an array MLflow made a frame of
        missing = [n for n in names if n not in columns]
        extra = [c for c in columns if c not in names]
        if missing or extra:
            more = " ..." if len(names) > 5 else ""
            raise ConfigError(
                f"the model's input needs the columns {names[:5]}{more} ({len(names)} "
                f"features); missing {missing[:5]}, unexpected {extra[:5]}. Fix: pass the "
                "columns the model was trained on (its signature lists them)."
            )
        return model_input[names].to_numpy(dtype=np.float64)

    def predict(self, model_input, params=None):
        """The predictions as a DataFrame (see the module)."""
        import pandas as pd  # start-up: pandas loads with MLflow anyway; not for training

        out = self.predictor.predict(finite_rows(self.rows(model_input)), self.forward)
        columns = self.predictor.columns
        if "values" in out:
            return pd.DataFrame(out["values"], columns=columns)
        scores = out.get("probabilities", out.get("scores"))
        frame = pd.DataFrame(scores, columns=columns[:-1])
        frame["label"] = out["labels"].astype(str)
        return frame


def finite_rows(X: np.ndarray) -> np.ndarray:
    """``X``, refused when a row holds a NaN or an infinity: its outputs would be NaN, and
    argmax calls NaN class 0 (HTTP 200 with label 0). The error is MLflow's bad-input one, so
    its server answers 400 with this message."""
    bad = ~np.isfinite(X)
    if not bad.any():
        return X
    rows = np.flatnonzero(bad.any(axis=1))
    column = int(np.flatnonzero(bad[rows[0]])[0])
    message = (
        f"the model's input has {len(rows)} rows with missing or infinite values (the first: row "
        f"{rows[0]}, column {column}: {X[rows[0], column]}); the model cannot predict from them "
        "(the scores would be NaN). Fix: fill or drop those rows before predicting."
    )
    try:
        from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException  # loaded by MLflow
    except ImportError:  # loaded without MLflow (lossbench.tracking.pyfunc.load)
        raise ConfigError(message) from None
    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def load(folder) -> LossbenchModel:
    """The model in a ``Predictor`` folder, with its spec's NumPy forward from the plugins."""
    predictor = Predictor.load(folder)
    spec = get_plugin_manager().registry.get("model", predictor.model)
    if spec.reference_forward is None:
        raise ConfigError(
            f"model {predictor.model!r} (plugin {spec.plugin!r}) has no NumPy reference_forward "
            "to predict with. Fix: give the model spec a reference_forward."
        )
    return LossbenchModel(predictor, spec.reference_forward)


def _load_pyfunc(data_path):
    """MLflow's entry point of the loader-module workflow."""
    return load(data_path)
