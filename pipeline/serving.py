"""MLflow pyfunc loader for the registered model: raw feature rows in, probability and label out.

Pickle-free: MLflow imports this module (shipped in the model's code/ folder) and calls
_load_pyfunc with the checkpoint, which is read with torch.load(weights_only=True).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline.model import BinaryClassifier, ModelConfig, load_checkpoint, predict_proba


class Scorer:
    """What `mlflow.pyfunc.load_model` returns for our model."""

    def __init__(self, model: BinaryClassifier, config: ModelConfig) -> None:
        self.model = model
        self.config = config

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per input row: `probability` of class 1 and `label` at the model's threshold."""
        if isinstance(model_input, pd.DataFrame):
            X = model_input[list(self.config.features)].to_numpy(dtype=np.float32)
        else:
            X = np.asarray(model_input, dtype=np.float32).reshape(-1, self.config.n_features)
        proba = predict_proba(self.model, self.config, X)
        return pd.DataFrame({"probability": proba, "label": (proba >= self.config.threshold).astype(np.int64)})


def _load_pyfunc(data_path: str) -> Scorer:
    """MLflow's loader_module entry point."""
    return Scorer(*load_checkpoint(data_path))
