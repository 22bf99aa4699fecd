"""Lean scoring: a fitted pipeline's encoding redone in NumPy, so that scoring a few rows skips pandas and the
ColumnTransformer's per-call overhead (~5 ms a call) while the estimator gets the very matrix the pipeline gives it.

``compile_pipeline`` reads a fitted pipeline of ``core.training.build_pipeline`` through public attributes only (the
ColumnTransformer's blocks, column order and ``sparse_output_``, the encoders' ``categories_`` /
``infrequent_categories_``, the imputers' ``statistics_``, the scalers' ``mean_`` / ``scale_``), then checks what it
built against the ColumnTransformer on a probe (every known category, a missing and an unknown one, numerics with
gaps). Anything it does not reproduce exactly (another step or transformer, an option it does not handle, a pandas
output, a probe that differs) gives a scorer that runs the pipeline itself: the same scores, only slower (``lean``
False, ``reason`` says why). No Airflow, no BentoML; NumPy, pandas and scikit-learn are imported inside functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from sklearn.pipeline import Pipeline

    from airflow_mlops.core.training import TrainingConfig

#: The probe's category no model has seen.
_UNKNOWN = "\x00lean-scoring-unknown"


class _Unsupported(Exception):
    """The pipeline holds something the lean encoder does not reproduce (the message says what)."""


def _value(value: Any) -> Any:
    """``value``, None if pandas counts it as missing (None, NaN, NaT, pd.NA): what ``features_frame`` hands on."""
    try:
        return None if value is None or value != value else value
    except TypeError:  # pd.NA
        return None


class LeanScorer:
    """Scores rows with a fitted pipeline: through its NumPy encoder when ``lean``, else through the pipeline itself
    (``reason`` says why). A classification's score is P(class 1), a regression's the prediction. Read-only once
    compiled: threads may share it.
    """

    def __init__(self, pipeline: Any, config: TrainingConfig, blocks: list | None, sparse: bool, reason: str | None):
        self.pipeline, self.config, self.lean, self.reason = pipeline, config, blocks is not None, reason
        self._blocks, self._sparse = blocks, sparse
        self._estimator = pipeline[-1] if blocks is not None else pipeline

    def score_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """One score per row: a mapping holding the model's features (an absent one counts as missing)."""
        if not self.lean:
            import pandas as pd

            return self._pipeline(pd.DataFrame.from_records(list(rows), columns=self.config.features))
        cats = [[_value(row.get(c)) for row in rows] for c in self.config.categorical]
        return self._score(cats, [_numeric([row.get(c) for row in rows]) for c in self.config.numeric], len(rows))

    def score_columns(self, columns: Mapping[str, Sequence[Any]] | Any) -> np.ndarray:
        """One score per row of ``columns``: a DataFrame, or a mapping of feature name → values (a list, a NumPy array,
        a pandas Series). Other columns are ignored."""
        features = self.config.features
        if not self.lean:
            import pandas as pd

            is_frame = isinstance(columns, pd.DataFrame)
            return self._pipeline(columns if is_frame else pd.DataFrame({c: columns[c] for c in features}))
        cats = [_categorical(columns[c]) for c in self.config.categorical]
        nums = [_numeric(columns[c]) for c in self.config.numeric]
        if len(sizes := {len(v) for v in (*cats, *nums)}) != 1:
            raise ValueError(f"the feature columns have different lengths: {sorted(sizes)}")
        return self._score(cats, nums, sizes.pop())

    def encode(self, cats: list[list[Any]], nums: list[np.ndarray], n: int) -> Any:
        """The ColumnTransformer's output for ``n`` rows of categoricals (values, None when missing) and numerics
        (float64, NaN when missing), in config order: a float64 ndarray, or a CSR matrix when the pipeline's is sparse."""
        import numpy as np

        parts = []
        for kind, index, spec in self._blocks:
            if kind == "numeric":
                fill, mean, scale = spec
                block = np.column_stack([nums[i] for i in index])
                block = block if fill is None else np.where(np.isnan(block), fill, block)
                block = block if mean is None else block - mean
                parts.append(block if scale is None else block / scale)
            elif kind == "ordinal":
                codes, unknown = spec
                parts.append(np.fromiter((codes.get(v, unknown) for v in cats[index]), "float64", n).reshape(n, 1))
            else:  # one-hot: the value's column; unknown -1: all zeros
                columns, unknown, width = spec
                where = np.fromiter((columns.get(v, unknown) for v in cats[index]), np.intp, n)
                block, hit = np.zeros((n, width)), where >= 0
                block[np.flatnonzero(hit), where[hit]] = 1.0
                parts.append(block)
        matrix = np.hstack(parts)
        if self._sparse:
            from scipy import sparse

            return sparse.csr_matrix(matrix)
        return matrix

    def _score(self, cats: list[list[Any]], nums: list[np.ndarray], n: int) -> np.ndarray:
        return self._answer(self.encode(cats, nums, n) if n else None, n)

    def _pipeline(self, frame: Any) -> np.ndarray:
        from airflow_mlops.core.training import features_frame

        return self._answer(features_frame(frame, self.config) if len(frame) else None, len(frame))

    def _answer(self, X: Any, n: int) -> np.ndarray:
        import numpy as np

        if n == 0:
            return np.empty(0)
        if self.config.task == "classification":
            return np.asarray(self._estimator.predict_proba(X), dtype="float64")[:, 1]
        values = np.asarray(self._estimator.predict(X), dtype="float64")
        if values.size != n:
            raise ValueError(f"the model predicted an array of shape {values.shape} for {n} rows")
        return values.reshape(n)


def _categorical(values: Any) -> list[Any]:
    """A column's categorical values as ``features_frame`` hands them on: the value, None when missing."""
    if hasattr(values, "notna"):  # a pandas Series: features_frame's own conversion
        return values.astype("object").where(values.notna(), None).tolist()
    return [_value(v) for v in values]


def _numeric(values: Any) -> np.ndarray:
    """A column's numeric values as ``features_frame`` hands them on: float64, NaN when missing."""
    import numpy as np

    if hasattr(values, "to_numpy"):  # a pandas Series: features_frame's own conversion
        return values.to_numpy(dtype="float64", na_value=np.nan)
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        return values.astype("float64")
    return np.array([math.nan if (v := _value(value)) is None else v for value in values], dtype="float64")


def compile_pipeline(pipeline: Pipeline, config: TrainingConfig) -> LeanScorer:
    """A scorer of the fitted ``pipeline`` (``build_pipeline(config)`` fitted on ``features_frame`` frames): lean when
    its encoding is reproduced exactly, else one that runs the pipeline (``lean`` False, ``reason`` says why)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scorer = LeanScorer(pipeline, config, *_compile(pipeline, config), None)
            _check(scorer, pipeline[0], config)
    except Exception as err:  # whatever it cannot compile, the pipeline itself scores
        reason = str(err) if isinstance(err, _Unsupported) else f"compiling failed: {type(err).__name__}: {err}"
        return LeanScorer(pipeline, config, None, False, reason)
    return scorer


def _compile(pipeline: Any, config: TrainingConfig) -> tuple[list, bool]:
    """The encoder's blocks, in the ColumnTransformer's output order, and whether its output is sparse."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if type(pipeline) is not Pipeline or len(pipeline.steps) != 2 or type(pipeline[0]) is not ColumnTransformer:
        raise _Unsupported(f"not a Pipeline of a ColumnTransformer and an estimator: {_names(pipeline)}")
    encode, estimator = pipeline[0], pipeline[-1]
    if _identity(estimator) or hasattr(estimator, "feature_names_in_"):
        raise _Unsupported("no estimator, or one fitted on a DataFrame (the ColumnTransformer outputs pandas)")
    names = list(getattr(encode, "feature_names_in_", ()))
    if names != config.features or encode.transformer_weights:
        raise _Unsupported(f"the ColumnTransformer was fitted on {names}, not the config's features, or weighs them")
    categorical, numeric = list(config.categorical), list(config.numeric)
    blocks: list = []
    for name, transformer, selected in encode.transformers_:
        if isinstance(selected, slice | str | int) or callable(selected) or any(isinstance(c, bool) for c in selected):
            raise _Unsupported(f"transformer {name!r} selects its columns by {selected!r}")
        columns = [c if isinstance(c, str) else names[int(c)] for c in selected]
        if isinstance(transformer, str) and transformer == "drop" or not columns:
            continue
        steps = [s for _, s in transformer.steps] if type(transformer) is Pipeline else [transformer]
        steps = [s for s in steps if not _identity(s)]
        if all(c in numeric for c in columns):
            blocks.append(("numeric", [numeric.index(c) for c in columns], _numeric_steps(name, steps)))
        elif all(c in categorical for c in columns) and steps:
            blocks += _categorical_blocks(name, steps, [categorical.index(c) for c in columns])
        else:
            raise _Unsupported(f"transformer {name!r} ({_names(transformer)}) on {columns} is not reproduced")
    if not blocks:
        raise _Unsupported("the ColumnTransformer outputs no column")
    return blocks, bool(encode.sparse_output_)


def _numeric_steps(name: str, steps: list) -> tuple[Any, Any, Any]:
    """(imputed values, mean, scale) of a numeric block: a SimpleImputer of NaN then a StandardScaler, each optional."""
    import numpy as np
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    if [type(s) for s in steps] not in ([], [SimpleImputer], [StandardScaler], [SimpleImputer, StandardScaler]):
        raise _Unsupported(f"numeric transformer {name!r} is {_names(steps)}, not SimpleImputer → StandardScaler")
    fill = mean = scale = None
    for step in steps:
        if isinstance(step, SimpleImputer):
            fill = np.asarray(step.statistics_, dtype="float64")
            if step.add_indicator or not _is_nan(step.missing_values) or np.isnan(fill).any():
                raise _Unsupported(f"the imputer of {name!r} adds indicators, imputes no NaN, or drops a feature")
        else:
            mean, scale = (step.mean_ if step.with_mean else None), (step.scale_ if step.with_std else None)
    return fill, mean, scale


def _categorical_blocks(name: str, steps: list, index: list[int]) -> list:
    """One block per column of a categorical transformer: SimpleImputer(s), then an OrdinalEncoder or OneHotEncoder
    (infrequent categories share the last column, after the frequent ones in ``categories_`` order)."""
    import numpy as np
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    *imputers, encoder = steps
    for s in imputers:
        if type(s) is not SimpleImputer or s.add_indicator or not isinstance(s.missing_values, float | str | None):
            raise _Unsupported(f"categorical transformer {name!r} is {_names(steps)}")
    if type(encoder) not in (OrdinalEncoder, OneHotEncoder) or np.dtype(encoder.dtype) != np.float64:
        raise _Unsupported(f"categorical transformer {name!r} ends in {_names([encoder])}, not a float64 encoder")
    ordinal, infrequent = type(encoder) is OrdinalEncoder, getattr(encoder, "infrequent_categories_", None)
    if ordinal and (encoder.handle_unknown != "use_encoded_value" or any(r is not None for r in infrequent or ())):
        raise _Unsupported(f"the OrdinalEncoder of {name!r} raises on unknown values or groups infrequent ones")
    if not ordinal and (
        encoder.drop_idx_ is not None or encoder.handle_unknown not in ("ignore", "infrequent_if_exist")
    ):
        raise _Unsupported(f"the OneHotEncoder of {name!r} drops a category or does not ignore unknown ones")
    blocks = []
    for j, column in enumerate(index):
        known = [c for c in encoder.categories_[j] if not _is_nan(c)]  # NaN never comes: features_frame gives None
        rare = list(infrequent[j]) if infrequent and infrequent[j] is not None else []
        frequent = [c for c in known if c not in rare]
        mapping = {c: i for i, c in enumerate(frequent)} | dict.fromkeys(rare, len(frequent))
        for imputer in reversed(imputers):  # a value an imputer replaces is encoded as its replacement
            missing, fill = imputer.missing_values, imputer.statistics_[j]
            if not _is_nan(missing):
                mapping.pop(missing, None)
                if fill in mapping:
                    mapping[missing] = mapping[fill]
        if ordinal:
            blocks.append(
                ("ordinal", column, ({c: float(i) for c, i in mapping.items()}, float(encoder.unknown_value)))
            )
        else:
            unknown = len(frequent) if rare and encoder.handle_unknown == "infrequent_if_exist" else -1
            blocks.append(("onehot", column, (mapping, unknown, len(frequent) + bool(rare))))
    return blocks


def _check(scorer: LeanScorer, encode: Any, config: TrainingConfig) -> None:
    """Raise ``_Unsupported`` unless the lean encoder gives the ColumnTransformer's matrix (kind, shape, stored
    entries, values) on a probe: each known category of every column, None and an unknown value; numerics with gaps."""
    import numpy as np
    import pandas as pd
    from scipy import sparse

    known = {index: list(spec[0]) for kind, index, spec in scorer._blocks if kind != "numeric" and spec[0]}
    n = max(map(len, known.values()), default=1) + 2
    cats = [[None] * n for _ in config.categorical]
    for j, categories in known.items():
        cats[j] = [categories[i % len(categories)] for i in range(n - 2)] + [None, _UNKNOWN]
    grid = np.linspace(-2.0, 3.0, n)
    nums = [np.where(np.arange(n) % 3 == k % 3, np.nan, grid * (k + 1)) for k in range(len(config.numeric))]
    values = dict(zip(config.categorical, cats, strict=True)) | dict(zip(config.numeric, nums, strict=True))
    dtypes = {c: "object" if c in config.categorical else "float64" for c in config.features}
    expected = encode.transform(pd.DataFrame({c: pd.Series(values[c], dtype=dtypes[c]) for c in config.features}))
    got = scorer.encode(cats, nums, n)
    if not isinstance(expected, np.ndarray | sparse.spmatrix | sparse.sparray) or (
        sparse.issparse(expected) != sparse.issparse(got) or sparse.issparse(got) and expected.nnz != got.nnz
    ):
        raise _Unsupported(f"the ColumnTransformer gives a {type(expected).__name__}, the lean encoder another")
    if not np.array_equal(*(m.toarray() if sparse.issparse(m) else m for m in (expected, got)), equal_nan=True):
        raise _Unsupported("the lean encoder differs from the ColumnTransformer on the probe")


def _identity(step: Any) -> bool:
    """Whether a step hands its input on unchanged: None, ``"passthrough"`` (a fitted ColumnTransformer holds it as a
    FunctionTransformer without a function)."""
    from sklearn.preprocessing import FunctionTransformer

    if isinstance(step, str) or step is None:
        return step in (None, "passthrough")
    return type(step) is FunctionTransformer and step.func is None


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _names(obj: Any) -> str:
    steps = [s for _, s in obj.steps] if hasattr(obj, "steps") else obj if isinstance(obj, list) else [obj]
    return " → ".join(type(s).__name__ for s in steps)
