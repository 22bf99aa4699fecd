"""``python -m airflow_mlops check <folder>``: everything about a use case that can be checked before it runs.

:func:`check` loads ``mlops.yaml`` with the typed loader (its error, if any, is the only problem), then checks
what the loader does not: that every model feature is served by a view, sent with the request or derived from it
by ``entity_keys``; the module's functions and their signatures; the estimator; slices, gate and monitoring
metrics for the task; the request schema and the canned requests; the Great Expectations suites (as JSON, without
importing Great Expectations). Each problem reads ``<file>: <key>: why``, the file relative to the use-case folder.

Light to import (no pandas, no ML library): pydantic and pandas are imported when the request schema is built and
``entity_keys`` runs on the canned requests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_mlops.usecase import config as usecase_config
from airflow_mlops.usecase.config import CONFIG_FILE, UseCase, UseCaseConfigError

#: The use case's functions: name → (positional arity, required, what it is for).
FUNCTIONS: dict[str, tuple[int, bool, str]] = {
    "build_features": (1, True, "build_features(ctx) returns {view name: DataFrame}"),
    "label_rows": (1, True, "label_rows(ctx) returns the period's training rows"),
    "entity_keys": (2, True, "entity_keys(rows, ctx) returns the id column and every view's key of request rows"),
    "outcomes": (1, False, "outcomes(ctx) returns the period's known outcomes"),
    "prepare_validation": (1, False, "prepare_validation(frames) returns the frames a suite checks"),
    "make_model": (1, False, "make_model(params) returns a scikit-learn estimator"),
    "demo_batches": (1, False, "demo_batches(period) returns {file name: DataFrame}"),
}
#: The keys of the gate policy (``core.gate.GatePolicy``).
GATE_KEYS = ("absolute", "max_regression", "min_slice_size", "slice_columns")
TRAINING_SET_SUITE = "training_set.json"
DEFAULT_CANNED_FILE = "serving/canned_requests.json"
#: Where canned requests are named in ``serving``.
CANNED_KEYS = ("swap", "infra_validation")


def estimators() -> dict[str, tuple[str, ...]]:
    """The built-in estimators of each task (``core.training.ESTIMATORS``)."""
    from airflow_mlops.core.training import ESTIMATORS

    return {task: tuple(names) for task, names in ESTIMATORS.items()}


def task_metrics(task: str) -> tuple[str, ...]:
    """The metrics an evaluation of a ``task`` model reports (``core.evaluation.metrics_for``).

    :param task: ``classification`` or ``regression``.
    """
    from airflow_mlops.core.evaluation import metrics_for

    return metrics_for(task)


@dataclass
class _Run:
    """One check's state: the use case, the problems found so far, and what later checks may rely on."""

    usecase: UseCase
    problems: list[str] = field(default_factory=list)
    module: Any = None  # the imported module, None when it failed to import
    functions: dict[str, Callable[..., Any]] = field(default_factory=dict)  # the usable ones
    request_fields: tuple[str, ...] = ()
    request_spec: Any = None  # the parsed RequestSpec, None when absent or invalid
    request_model: Any = None
    canned_rows: list[Any] = field(default_factory=list)  # validated canned requests (single)
    keys_columns: set[str] | None = None  # what entity_keys returned for the canned requests, when it ran
    #: entity_keys could not run on the canned requests because of a problem already reported (the request
    #: schema, a canned request, the module or entity_keys itself): the features it may derive are not judged.
    keys_blocked: bool = False

    @property
    def folder(self) -> Path:
        return self.usecase.folder

    @property
    def module_name(self) -> str:
        return self.relative(self.usecase.module_file)

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the use-case folder when it is inside it."""
        try:
            return Path(path).resolve().relative_to(self.folder.resolve()).as_posix()
        except ValueError:
            return str(path)

    def add(self, file: str, key: str, why: str) -> None:
        self.problems.append(f"{file}: {key}: {why}" if key else f"{file}: {why}")

    def config(self, key: str, why: str) -> None:
        self.add(CONFIG_FILE, key, why)


def check(folder: str | Path, *, light: bool = False) -> list[str]:
    """The problems of the use case in ``folder``, each ``<file>: <key>: why`` (file relative to the folder);
    empty when it is valid. A config the loader refuses is the single problem.

    :param folder: the use-case folder (holding ``mlops.yaml``), or its ``mlops.yaml``.
    :param light: what the DAG factory runs while Airflow parses: every check but running ``entity_keys`` on the
        canned requests (that needs pandas, which DAG parsing must not import).
    """
    path = Path(folder)
    try:
        usecase = usecase_config.load(path)
    except UseCaseConfigError as err:
        return [_relative_message(str(err), path)]
    run = _Run(usecase)
    _check_request(run)
    _check_module(run)
    if light:
        run.keys_blocked = True  # entity_keys is not run: features it may derive are not judged
    else:
        _check_entity_keys(run)
    _check_features(run)
    _check_estimator(run)
    _check_slices(run)
    _check_gate(run)
    _check_monitoring(run)
    _check_suites(run)
    return run.problems


def _relative_message(message: str, folder: Path) -> str:
    """The loader's message with the folder's absolute path dropped (``/x/uc/mlops.yaml: ...`` → ``mlops.yaml: ...``)."""
    path = folder.resolve()
    base = path if path.is_dir() or not path.suffix else path.parent  # as config.load reads ``folder``
    prefix = f"{base}/"
    return message[len(prefix) :] if message.startswith(prefix) else message


# -- serving.request and the canned requests ---------------------------------------------------------------
def _check_request(run: _Run) -> None:
    """``serving.request`` parses and builds; each canned request file exists and its requests validate."""
    serving = run.usecase.serving
    spec = serving.get("request")
    if spec is None:
        return
    raw_fields = spec.get("fields") if isinstance(spec, dict) else None
    if isinstance(raw_fields, dict):
        run.request_fields = tuple(str(name) for name in raw_fields)
    from airflow_mlops.core import request_schema

    try:
        parsed = request_schema.parse_spec(spec)
        model = request_schema.request_model(spec, base_dir=run.folder)
    except ValueError as err:
        run.problems.append(f"{CONFIG_FILE}: {err}")
        run.keys_blocked = True
        return
    run.request_spec, run.request_model = parsed, model
    run.request_fields = tuple(f.name for f in parsed.fields)
    # The swap check's file is required (the service answers it before it takes a model), by default
    # serving/canned_requests.json; infrastructure validation's defaults to the swap check's.
    files: dict[str, tuple[str, str]] = {}
    for section in CANNED_KEYS:
        named = (serving.get(section) or {}).get("canned_requests_file")
        if named or section == "swap":
            default = "" if named else f" (the default of serving.{section}.canned_requests_file)"
            files.setdefault(str(named or DEFAULT_CANNED_FILE), (f"serving.{section}.canned_requests_file", default))
    for name, (key, default) in files.items():
        target = Path(name) if Path(name).is_absolute() else run.folder / name
        if not target.is_file():
            run.config(key, f"{name}{default} does not exist (a path relative to the use-case folder)")
            run.keys_blocked = True
            continue
        before = len(run.problems)
        _check_canned(run, target, model)
        run.keys_blocked |= len(run.problems) > before


def _errors(err: Any) -> str:
    """A pydantic ``ValidationError`` as ``field: message; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc') or ()) or '(request)'}: {e['msg']}" for e in err.errors())


def _check_canned(run: _Run, target: Path, model: Any) -> None:
    """Every ``single`` request and every ``batch`` row validates; every ``bad`` ``/predict`` body is refused."""
    from pydantic import ValidationError

    file = run.relative(target)
    try:
        canned = json.loads(target.read_text())
    except (OSError, ValueError) as err:
        run.add(file, "", f"cannot read it as JSON: {err}")
        return
    if not isinstance(canned, dict):
        run.add(file, "", 'must be an object with "single", "batch" and "bad" requests')
        return
    single = canned.get("single")
    if not isinstance(single, list) or not single:
        run.add(file, "single", "must be a non-empty list of requests")
        single = []
    batch = canned.get("batch")
    rows: list[tuple[str, Any]] = [(f"single[{i}]", request) for i, request in enumerate(single)]
    if batch is not None:
        lists = [(k, v) for k, v in batch.items() if isinstance(v, list)] if isinstance(batch, dict) else []
        if len(lists) != 1:
            run.add(file, "batch", 'must be an object holding one list of requests, e.g. {"rows": [...]}')
        else:
            key, values = lists[0]
            rows += [(f"batch.{key}[{i}]", request) for i, request in enumerate(values)]
    for where, request in rows:
        try:
            validated = model.model_validate(request)
        except ValidationError as err:
            run.add(file, where, f"not a valid request for serving.request: {_errors(err)}")
            continue
        if where.startswith("single["):
            run.canned_rows.append(validated)
    bad = canned.get("bad") or []
    if not isinstance(bad, list):
        run.add(file, "bad", 'must be a list of {"why", "route", "body"}')
        bad = []
    for i, case in enumerate(bad):
        if not isinstance(case, dict) or case.get("route") != "/predict":
            continue
        try:
            model.model_validate(case.get("body"))
        except ValidationError:
            continue
        run.add(file, f"bad[{i}]", f"the request model accepts it, but it is meant to be refused ({case.get('why')})")


# -- the module's functions --------------------------------------------------------------------------------
def _check_module(run: _Run) -> None:
    """The module imports; required functions exist; every function present takes the right positional arguments."""
    from airflow_mlops.usecase.user_code import UserCodeError, check_arity, load_module

    try:
        run.module = load_module(run.usecase.module_file)
    except UserCodeError as err:
        cause = err.__cause__
        why = f"importing it failed: {cause!r}" if cause is not None else str(err)
        run.add(run.module_name, "", why)
        run.keys_blocked = True
        return
    for name, (arity, required, what) in FUNCTIONS.items():
        fn = getattr(run.module, name, None)
        if fn is None:
            if required:
                run.add(run.module_name, name, f"no such function (required: {what})")
        elif not callable(fn):
            run.add(run.module_name, name, f"is not a function ({what})")
        else:
            try:
                check_arity(fn, arity, name)
            except UserCodeError:
                run.add(run.module_name, name, f"must take {arity} positional argument(s) ({what})")
            else:
                run.functions[name] = fn
                continue
        run.keys_blocked |= name == "entity_keys"


def _check_entity_keys(run: _Run) -> None:
    """``entity_keys`` on the valid canned requests (as the serving calls it) returns a frame of as many rows with
    the id column and every view's key."""
    fn = run.functions.get("entity_keys")
    if fn is None or run.request_spec is None or not run.canned_rows:
        return
    from airflow_mlops.core import request_schema
    from airflow_mlops.usecase.context import FeatureContext

    usecase = run.usecase
    rows = request_schema.request_frame(run.canned_rows, run.request_spec)
    ctx = FeatureContext(  # as the serving calls it (core.serving_model.enrich_requests): no period, no frames
        period="",
        frames={},
        params=dict(usecase.features.get("params") or {}),
        config=usecase,
    )
    where = "entity_keys"
    try:
        keys = fn(rows.copy(), ctx)
    except Exception as err:  # noqa: BLE001 - the use case's own code: any failure is the problem to report
        run.add(run.module_name, where, f"failed on the canned requests: {err!r}")
        run.keys_blocked = True
        return
    if not _is_frame(keys):
        run.add(run.module_name, where, f"returned {type(keys).__name__}, not a pandas DataFrame")
        run.keys_blocked = True
        return
    if len(keys) != len(rows):
        run.add(run.module_name, where, f"returned {len(keys)} rows for {len(rows)} canned requests (one per request)")
    needed = [usecase.id_column, *dict.fromkeys(view.key for view in usecase.views)]
    missing = [c for c in needed if c not in keys.columns]
    if missing:
        run.add(run.module_name, where, f"returns no column {', '.join(missing)} (the id column and every view's key)")
    run.keys_columns = {str(c) for c in keys.columns}


def _is_frame(value: Any) -> bool:
    import pandas as pd

    return isinstance(value, pd.DataFrame)


# -- model features ----------------------------------------------------------------------------------------
def _check_features(run: _Run) -> None:
    """Each model feature is a view field, or comes with the request (a request field, or a column entity_keys
    returns for the canned requests); a numeric feature is no string field. The label is served by no view."""
    usecase = run.usecase
    served = usecase.view_fields()
    for view in usecase.views:
        if usecase.label in view.fields:
            run.config(
                f"features.views.{view.name}.fields.{usecase.label}",
                "is the label (label.column): no view may serve it",
            )
    for kind in ("categorical", "numeric"):
        for name in getattr(usecase, kind):
            key = f"model.features.{kind}"
            view = served.get(name)
            if view is not None:
                if kind == "numeric" and view.fields[name] == "string":
                    run.config(key, f"{name} is a string field of view {view.name}: list it under categorical")
                continue
            if run.keys_columns is not None:  # entity_keys ran on the canned requests
                if name in run.keys_columns:
                    continue
                if name in run.request_fields:
                    run.add(
                        run.module_name,
                        "entity_keys",
                        f"returns no column {name}: a model feature no view serves must come with each request "
                        "(pass the request field through)",
                    )
                    continue
                run.config(
                    key,
                    f"{name} is neither a feature view field nor a serving.request field (nor a column entity_keys "
                    "returns for the canned requests)",
                )
            elif name not in run.request_fields and not run.keys_blocked:
                hint = ""
                if run.request_spec is not None and run.functions.get("entity_keys") is not None:
                    hint = (
                        " (to derive it in entity_keys, give canned requests in serving.swap.canned_requests_file: "
                        "check runs entity_keys on them)"
                    )
                run.config(key, f"{name} is neither a feature view field nor a serving.request field{hint}")


# -- estimator, slices, gate, monitoring -------------------------------------------------------------------
def _check_estimator(run: _Run) -> None:
    """``model.estimator``: a built-in of the task, or ``<module stem>:<function>`` of the use case's module taking
    one parameter; then the whole training config as ``core.training.TrainingConfig`` reads it."""
    usecase = run.usecase
    task = usecase.task
    estimator = str(usecase.model.get("estimator") or "hist_gradient_boosting")
    known = estimators().get(task, ())
    module_stem = usecase.module_file.stem
    ok = True
    if ":" not in estimator:
        if estimator not in known:
            ok = False
            run.config(
                "model.estimator",
                f"{estimator!r} is not a {task} estimator ({', '.join(known)}) nor a factory of the use case's "
                f"module written '{module_stem}:<function>'",
            )
    else:
        stem, _, function = (part.strip() for part in estimator.partition(":"))
        if stem != module_stem or not function.isidentifier():
            ok = False
            run.config(
                "model.estimator",
                f"{estimator!r}: a factory is named '<module stem>:<function>' of {usecase.module_file.name}, "
                f"e.g. '{module_stem}:make_model'",
            )
        elif run.module is not None:
            fn = getattr(run.module, function, None)
            if fn is None or not callable(fn):
                ok = False
                run.config("model.estimator", f"{usecase.module_file.name} has no function {function}(params)")
            elif function not in FUNCTIONS:  # the functions check reported a bad make_model already
                from airflow_mlops.usecase.user_code import UserCodeError, check_arity

                try:
                    check_arity(fn, 1, function)
                except UserCodeError:
                    ok = False
                    run.config("model.estimator", f"{function}() must take one positional argument (params)")
    if not ok:
        return
    from airflow_mlops.core.training import TrainingConfig

    try:
        TrainingConfig.from_dict(usecase.training_config_dict())
    except (TypeError, ValueError, KeyError) as err:
        run.config("model", str(err))


def _columns_known(usecase: UseCase) -> set[str]:
    return {*usecase.model_features, usecase.period_column}


def _check_slices(run: _Run) -> None:
    """``model.slices`` and ``gate.slice_columns`` name model features or the period column; the gate's slices
    are among the model's."""
    usecase = run.usecase
    known = _columns_known(usecase)
    slices = [str(s) for s in usecase.model.get("slices") or []]
    for name in slices:
        if name not in known:
            run.config(
                "model.slices", f"{name} is neither a model feature nor the period column ({usecase.period_column})"
            )
    gate_slices = usecase.gate.get("slice_columns") or []
    if not isinstance(gate_slices, list):
        run.config("gate.slice_columns", "must be a list of model.slices columns")
        return
    for name in (str(s) for s in gate_slices):
        if name not in known:
            run.config(
                "gate.slice_columns",
                f"{name} is neither a model feature nor the period column ({usecase.period_column})",
            )
        elif name not in slices:
            run.config("gate.slice_columns", f"{name} is not one of model.slices (the hold-out is sliced by those)")


def _metric_problem(run: _Run, key: str, metrics: Any) -> bool:
    """Report every metric of ``metrics`` (names or a mapping keyed by them) unknown for the task; True if any."""
    task = run.usecase.task
    known = task_metrics(task)
    found = False
    for metric in metrics or ():
        if metric not in known:
            found = True
            run.config(key, f"{metric} is not a {task} metric ({', '.join(known)})")
    return found


def _check_gate(run: _Run) -> None:
    """The gate's keys and metrics (those of the task); then the policy as ``core.gate.GatePolicy`` reads it."""
    gate = run.usecase.gate
    unknown = sorted(set(gate) - set(GATE_KEYS))
    for key in unknown:
        run.config(f"gate.{key}", f"unknown key (expected {', '.join(GATE_KEYS)})")
    absolute = gate.get("absolute") or {}
    regression = gate.get("max_regression") or {}
    if not isinstance(absolute, dict):
        run.config("gate.absolute", "must map metrics to {min: ..., max: ...}")
        return
    if not isinstance(regression, dict):
        run.config("gate.max_regression", "must be a mapping with overall and per_slice")
        return
    bad = bool(unknown) | _metric_problem(run, "gate.absolute", absolute)
    for part in sorted(set(regression) - {"overall", "per_slice"}):
        bad = True
        run.config(f"gate.max_regression.{part}", "unknown key (expected overall, per_slice)")
    for part in ("overall", "per_slice"):
        bad |= _metric_problem(run, f"gate.max_regression.{part}", regression.get(part) or {})
    if bad or not gate:
        return
    from airflow_mlops.core.gate import GatePolicy

    try:
        GatePolicy.from_dict(gate)
    except (TypeError, ValueError, AttributeError) as err:
        run.config("gate", str(err))


def _check_monitoring(run: _Run) -> None:
    """Performance metrics and decay metrics of the task; drift thresholds per model feature."""
    monitoring = run.usecase.monitoring
    features = set(run.usecase.model_features)
    performance = monitoring.get("performance") or {}
    bad = False
    if isinstance(performance, dict):
        bad |= _metric_problem(run, "monitoring.performance.metrics", performance.get("metrics") or ())
    policy = monitoring.get("policy") or {}
    decay = (policy.get("performance_decay") or {}) if isinstance(policy, dict) else {}
    if isinstance(decay, dict):
        for part in ("overall", "per_slice"):
            bad |= _metric_problem(run, f"monitoring.policy.performance_decay.{part}", decay.get(part) or {})
    drift = monitoring.get("drift") or {}
    for key, mapping in (
        ("monitoring.drift.per_column_threshold", drift.get("per_column_threshold") if isinstance(drift, dict) else {}),
        ("monitoring.policy.feature_drift", policy.get("feature_drift") if isinstance(policy, dict) else {}),
    ):
        for name in mapping or {}:
            if name not in features:
                bad = True
                run.config(key, f"{name} is not a model feature (model.features)")
    if bad or not isinstance(policy, dict) or not policy:
        return
    from airflow_mlops.core.retraining_policy import RetrainingPolicy

    try:
        RetrainingPolicy.from_dict(policy)
    except (TypeError, ValueError, AttributeError) as err:
        run.config("monitoring.policy", str(err))


# -- Great Expectations suites (as JSON) -------------------------------------------------------------------
def _check_suites(run: _Run) -> None:
    """Each batch file's suite and ``expectations/training_set.json`` (optional) are GX suites: a name and a list
    of expectations, each with a ``type``; a training-set column list matches the training-set contract."""
    usecase = run.usecase
    suites = dict.fromkeys(Path(p) for p in usecase.source.suites.values())
    training = usecase.folder / "expectations" / TRAINING_SET_SUITE
    if training.is_file():
        suites[training] = None
    for path in suites:
        suite = _read_suite(run, path)
        features_ok = not any(f"{CONFIG_FILE}: model.features" in p for p in run.problems)
        if suite is not None and path == training and features_ok:
            _check_training_suite(run, path, suite)


def _read_suite(run: _Run, path: Path) -> dict | None:
    file = run.relative(path)
    try:
        suite = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        run.add(file, "", f"cannot read it as JSON: {err}")
        return None
    if not isinstance(suite, dict):
        run.add(file, "", 'must be a GX suite: an object with "name" and "expectations"')
        return None
    if not isinstance(suite.get("name"), str) or not suite["name"]:
        run.add(file, "name", "must be the suite's name (a non-empty string)")
    expectations = suite.get("expectations")
    if not isinstance(expectations, list):
        run.add(file, "expectations", "must be a list of expectations")
        return None
    for i, expectation in enumerate(expectations):
        if not isinstance(expectation, dict):
            run.add(file, f"expectations[{i}]", 'must be an object with "type" and "kwargs"')
            continue
        kind = expectation.get("type")
        if not isinstance(kind, str) or not kind.startswith("expect_"):
            run.add(file, f"expectations[{i}].type", f"must name an expectation (expect_...), got {kind!r}")
        if not isinstance(expectation.get("kwargs", {}), dict):
            run.add(file, f"expectations[{i}].kwargs", "must be a mapping")
    return suite


def _check_training_suite(run: _Run, path: Path, suite: dict) -> None:
    """An ordered column list in the training-set suite must be the training-set contract of mlops.yaml."""
    usecase = run.usecase
    contract = [usecase.id_column, "event_timestamp", usecase.label, usecase.period_column, *usecase.model_features]
    for i, expectation in enumerate(suite["expectations"]):
        if not isinstance(expectation, dict) or expectation.get("type") != "expect_table_columns_to_match_ordered_list":
            continue
        listed = (expectation.get("kwargs") or {}).get("column_list")
        if isinstance(listed, list) and listed != contract:
            extra = [c for c in listed if c not in contract]
            absent = [c for c in contract if c not in listed]
            detail = "; ".join(
                part
                for part in (
                    f"not in the contract: {', '.join(map(str, extra))}" if extra else "",
                    f"missing: {', '.join(absent)}" if absent else "",
                    "same columns, another order" if not extra and not absent else "",
                )
                if part
            )
            run.add(
                run.relative(path),
                f"expectations[{i}].kwargs.column_list",
                f"differs from the training-set contract (id, event_timestamp, label, period column, model.features): "
                f"{detail}",
            )
