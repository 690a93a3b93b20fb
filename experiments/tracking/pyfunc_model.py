"""The trained network as an MLflow pyfunc model, logged as "models from code".

MLflow runs THIS FILE to load the model (the `set_model` call at the bottom), so no
pickle is involved, and it imports nothing of rayprop but the `trainer` package,
which travels inside the model (`code_paths`): the model loads and serves
(`mlflow models serve`) where rayprop is not installed, with numpy and pandas only.

Input: a DataFrame holding the feature columns (extra columns are ignored), or a
2-D array whose columns are the features in the model's order. Output: a
DataFrame with one row per input row and the network's output A[L] per column
(`p0..pK-1` class probabilities for softmax, else one column per target).
"""

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from trainer.model_io import load_model, output_names
from trainer.network import forward

NETWORK = "network"  # the artifact holding model.npz and model.json


class RaypropModel(PythonModel):
    def load_context(self, context):
        # model.npz is read with allow_pickle=False, shapes checked against model.json.
        self.spec, self.theta, meta = load_model(context.artifacts[NETWORK])
        self.features = list(meta.get("features") or [])
        self.columns = output_names(meta, self.spec.layers[-1])

    # The hint is what MLflow validates against (a DataFrame names no schema of its own,
    # the logged signature does); arrays are accepted here too.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            missing = [f for f in self.features if f not in model_input.columns]
            if missing and model_input.shape[1] == len(self.features):
                X = model_input.to_numpy()  # a plain matrix that arrived as a DataFrame
            elif missing:
                raise ValueError(f"input lacks the feature column {missing[0]!r}")
            else:
                X = model_input[self.features].to_numpy()
        else:
            X = np.asarray(model_input)
        if X.ndim != 2 or X.shape[1] != self.spec.layers[0]:
            raise ValueError(f"expected rows of {self.spec.layers[0]} features, got shape {X.shape}")
        X = np.ascontiguousarray(X, dtype=self.spec.dtype)
        _, AL = forward(self.spec, self.theta, X)
        return pd.DataFrame(AL.T.copy(), columns=self.columns)


set_model(RaypropModel())
