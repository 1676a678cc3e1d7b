"""The served model: MLflow's pyfunc loader module (Scorer, _load_pyfunc) and how register logs it (pyfunc_spec).

Pickle-free: MLflow imports this module (shipped in the model's code/ folder) and calls
_load_pyfunc with the checkpoint, which is read with torch.load(weights_only=True). Every registered model
records this module's name (loader_module): a process that imported this package loads those models with it.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.tables import TableError, feature_matrix

if TYPE_CHECKING:  # torch and pandas load with the model: register and report read SERVING_CONFIG without them
    import pandas as pd

    from pipeline.model import BinaryClassifier, ModelConfig

# How a registered model serves unless told otherwise (MLflow's model_config: SERVING_MODEL_CONFIG or
# `pipeline serve --device/--max-request-mb` override it): on the CPU even on a CUDA host, bodies to 16 MiB.
SERVING_CONFIG = {"device": "cpu", "max_request_bytes": 16 << 20}
# What the served model needs; versions come from this environment, local build tags dropped.
SERVING_PACKAGES = ("mlflow", "torch", "numpy", "pandas", "prometheus_client")


class Scorer:
    """What `mlflow.pyfunc.load_model` wraps for our model."""

    def __init__(self, model: BinaryClassifier, config: ModelConfig, records: bool = False) -> None:
        self.model = model
        self.config = config
        self.records = records  # inside `mlflow models serve`: answer rows as dicts (see predict)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame | list[dict]:
        """One row per input row: `probability` of class 1 and `label` at the model's threshold."""
        import pandas as pd

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        try:
            X = feature_matrix(frame, self.config.features)
        except TableError as exc:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import BAD_REQUEST

            raise MlflowException(str(exc), error_code=BAD_REQUEST) from None
        proba, label = self.score(X)
        if self.records:
            # The server writes a frame as its records; building them directly gives the same JSON
            # without what pandas spends constructing a two-column frame per request.
            pairs = zip(proba.tolist(), label.tolist(), strict=True)
            return [{"probability": p, "label": int(y)} for p, y in pairs]
        return pd.DataFrame({"probability": proba, "label": label})

    def score(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probability of class 1 (float64) and label (int64) per row of checked feature values."""
        from pipeline.model import predict_proba

        return self._labelled(predict_proba(self.model, self.config, X))

    def score_columns(self, columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """score() of rows given as checked float32 columns, one per feature (batch scoring's columnar input)."""
        from pipeline.model import predict_proba_columns

        return self._labelled(predict_proba_columns(self.model, self.config, columns))

    def _labelled(self, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return proba, (proba >= self.config.threshold).astype(np.int64)

    def get_raw_model(self) -> Scorer:
        """What MLflow's PyFuncModel.get_raw_model() gives: this scorer, for callers with arrays already checked."""
        return self


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> Scorer:
    """MLflow's loader_module entry point; model_config comes from register (overridable when loading)."""
    settings = model_config or {}
    from pipeline.model import load_checkpoint

    model, config = load_checkpoint(data_path)
    device = settings.get("device", "cpu")  # CPU unless asked, even on a CUDA host
    if device != "cpu":
        from pipeline.devices import resolve_device

        model = model.to(resolve_device(device, key="model_config device"))
    from pipeline.request_guard import guard_scoring_server

    serving = guard_scoring_server(int(settings.get("max_request_bytes") or 0), config.features)
    return Scorer(model, config, records=serving)


def pip_requirements() -> list[str]:
    """Pins for the serving environment, from the versions installed here."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in SERVING_PACKAGES]


def pyfunc_spec(
    checkpoint: Path, features: tuple[str, ...], example: np.ndarray, model_config: dict[str, Any]
) -> dict[str, Any]:
    """Arguments of mlflow.pyfunc.log_model/save_model for our model (loader module, no pickle).

    Columns are `double`: MLflow's REST parser casts JSON and CSV numbers to it, and float32 and
    float64 frames pass; MLflow itself refuses int64 frames from Python as a lossy cast.
    """
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return dict(
        loader_module=__name__,  # this module, shipped with the rest of the package
        data_path=str(checkpoint),
        code_paths=[str(Path(__file__).parent)],
        signature=ModelSignature(
            inputs=Schema([ColSpec("double", f) for f in features]),
            outputs=Schema([ColSpec("double", "probability"), ColSpec("long", "label")]),
        ),
        input_example=pd.DataFrame(example.astype(np.float64), columns=list(features)),
        pip_requirements=pip_requirements(),
        model_config=model_config,
    )
