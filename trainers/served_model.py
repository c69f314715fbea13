"""The registered model's pyfunc, logged as a model from code (MLflow "models from code";
trainers/tracking.py ``log_model``): MLflow stores this file, not a pickled object, and runs
it when the model is loaded.

Input: a DataFrame with ``user_id`` (the dataset's original ids) and optionally ``k``
(items per user; the largest value asked applies to every row, default 10). Output: a
DataFrame of ``user_id``, ``item_id`` (original ids), ``rank`` (1 = best) and ``score``,
``k`` rows per user, best first, never an item the user already interacted with. The
histories are the model's own artifact ``snapshot.npz`` (the users' histories at training
time, trainers/snapshot.py), so serving does not depend on the work folder the next retrain
replaces; a user the model never saw gets the popularity ranking (trainers/top_k.py).

``mlflow models serve -m models:/<name>@champion --env-manager local`` serves it at
``/invocations``.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

DEFAULT_K = 10
CANDIDATES = 500  # target-aware models rerank this many popular items (recommend.candidates)


class UserRecommender(PythonModel):
    def load_context(self, context) -> None:
        from trainers.top_k import TopK

        self.top = TopK.from_files(context.artifacts["weights"], context.artifacts["snapshot"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None
                ) -> pd.DataFrame:
        import torch

        from trainers.snapshot import lookup

        frame = pd.DataFrame(model_input)
        if "user_id" not in frame:
            raise ValueError("the input needs a column 'user_id' (the dataset's user ids)")
        k = int(frame["k"].max()) if "k" in frame and len(frame) else DEFAULT_K
        snapshot = self.top.snapshot
        users = frame["user_id"].astype(str).to_numpy()
        idx = lookup(snapshot.user_ids, users)  # 0: a user the model never saw
        rows = torch.as_tensor(np.where(idx > 0, idx, self.top.nobody))  # nobody: popularity
        items, scores = self.top.top(rows, k, exclude_seen=True, candidates=CANDIDATES)
        items, scores = items.cpu().numpy(), scores.cpu().numpy()
        keep = np.isfinite(scores)
        ranks = np.broadcast_to(np.arange(1, items.shape[1] + 1), items.shape)
        user_ids = np.broadcast_to(frame["user_id"].to_numpy()[:, None], items.shape)
        return pd.DataFrame({"user_id": user_ids[keep],
                             "item_id": snapshot.original_ids(items[keep], "items"),
                             "rank": ranks[keep], "score": scores[keep]})


mlflow.models.set_model(UserRecommender())
