"""``python -m airflow_mlops check`` / ``new`` and the use-case template.

The checks run on the shipped use cases and on broken copies of them (each broken one way: exactly one problem,
naming the file and the key). The template's own functions run on its demo data: their frames match the declared
view and the label-row contract, no label row can read a feature row stamped after it, a request gets the same
ids and row features as the label row of its day, the GX suite accepts a demo batch and refuses a broken one, and
a model trained on a demo training set passes the template's own gate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml

from airflow_mlops.__main__ import TEMPLATE, main
from airflow_mlops.usecase import FeatureContext
from airflow_mlops.usecase import config as usecase_config
from airflow_mlops.usecase.checks import check
from airflow_mlops.usecase.user_code import load_module

ROOT = Path(__file__).resolve().parents[1]
FLIGHT_DELAY = ROOT / "examples" / "flight_delay"
SEATTLE_WEATHER = ROOT / "examples" / "seattle_weather"


def _copy(source: Path, tmp_path: Path, name: str = "usecase") -> Path:
    target = tmp_path / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _edit_yaml(folder: Path, change: Callable[[dict], None]) -> None:
    path = folder / "mlops.yaml"
    raw = yaml.safe_load(path.read_text())
    change(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _edit_module(folder: Path, old: str, new: str) -> None:
    path = folder / "usecase.py"
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


# -- the shipped use cases pass ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "folder",
    [
        FLIGHT_DELAY,
        TEMPLATE,
        pytest.param(
            SEATTLE_WEATHER,
            marks=pytest.mark.skipif(
                not (SEATTLE_WEATHER / "mlops.yaml").is_file(), reason="examples/seattle_weather has no mlops.yaml yet"
            ),
        ),
    ],
    ids=["flight_delay", "template", "seattle_weather"],
)
def test_check_passes_on_the_shipped_use_cases(folder: Path) -> None:
    assert check(folder) == []


# -- broken variants: exactly one problem, naming the file and the key ---------------------------------------
def _add_numeric(name: str) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        raw["model"]["features"]["numeric"].append(name)

    return change


def _set_model(key: str, value: object) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        raw["model"][key] = value

    return change


def _add_slice(name: str) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        raw["model"]["slices"] = [*raw["model"]["slices"], name]

    return change


def _field_type(field: str, kind: str) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        raw["serving"]["request"]["fields"][field]["type"] = kind

    return change


def _gate_metric(metric: str) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        raw["gate"]["absolute"][metric] = {"min": 0.5}

    return change


def _canned_file(name: str) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        raw["serving"]["swap"]["canned_requests_file"] = name

    return change


TEMPLATE_ENTITY_KEYS = "def entity_keys(rows: pd.DataFrame, ctx: FeatureContext) -> pd.DataFrame:"
FLIGHT_ENTITY_KEYS = "def entity_keys(rows: pd.DataFrame, ctx: Any) -> pd.DataFrame:"

BROKEN = {
    # name: (folder, yaml change, module change (old, new), the problem's start)
    "template-unknown-feature": (
        TEMPLATE,
        _add_numeric("basket_size"),
        None,
        "mlops.yaml: model.features.numeric: basket_size is neither a feature view field nor a serving.request field",
    ),
    "flight-unknown-feature": (
        FLIGHT_DELAY,
        _add_numeric("gate_number"),
        None,
        "mlops.yaml: model.features.numeric: gate_number is neither a feature view field nor a serving.request field",
    ),
    "template-label-as-feature": (
        TEMPLATE,
        _add_numeric("next_day_sales"),
        None,
        "mlops.yaml: model.features: next_day_sales is the label",
    ),
    "flight-label-as-feature": (
        FLIGHT_DELAY,
        _add_numeric("is_late"),
        None,
        "mlops.yaml: model.features: is_late is the label",
    ),
    "template-forbidden-feature": (
        TEMPLATE,
        _add_numeric("customers"),
        None,
        "mlops.yaml: model.features: customers is listed in label.forbidden",
    ),
    "flight-forbidden-feature": (
        FLIGHT_DELAY,
        _add_numeric("dep_delay"),
        None,
        "mlops.yaml: model.features: dep_delay is listed in label.forbidden",
    ),
    "template-missing-build-features": (
        TEMPLATE,
        None,
        ("def build_features(ctx: FeatureContext)", "def build_features_v1(ctx: FeatureContext)"),
        "usecase.py: build_features: no such function (required",
    ),
    "template-entity-keys-arity": (
        TEMPLATE,
        None,
        (TEMPLATE_ENTITY_KEYS, "def entity_keys(rows: pd.DataFrame) -> pd.DataFrame:"),
        "usecase.py: entity_keys: must take 2 positional argument(s)",
    ),
    "flight-entity-keys-arity": (
        FLIGHT_DELAY,
        None,
        (FLIGHT_ENTITY_KEYS, "def entity_keys(rows: pd.DataFrame, ctx: Any, extra: Any) -> pd.DataFrame:"),
        "usecase.py: entity_keys: must take 2 positional argument(s)",
    ),
    "template-unknown-estimator": (
        TEMPLATE,
        _set_model("estimator", "xgboost"),
        None,
        "mlops.yaml: model.estimator: 'xgboost' is not a regression estimator",
    ),
    "flight-regression-estimator-on-classification": (
        FLIGHT_DELAY,
        _set_model("estimator", "ridge"),
        None,
        "mlops.yaml: model.estimator: 'ridge' is not a classification estimator",
    ),
    "template-factory-not-in-module": (
        TEMPLATE,
        _set_model("estimator", "usecase:make_model"),
        None,
        "mlops.yaml: model.estimator: usecase.py has no function make_model(params)",
    ),
    "template-slice-on-unknown-column": (
        TEMPLATE,
        _add_slice("region"),
        None,
        "mlops.yaml: model.slices: region is neither a model feature nor the period column (day)",
    ),
    "flight-slice-on-unknown-column": (
        FLIGHT_DELAY,
        _add_slice("terminal"),
        None,
        "mlops.yaml: model.slices: terminal is neither a model feature nor the period column (month)",
    ),
    "template-bad-request-field-type": (
        TEMPLATE,
        _field_type("store", "text"),
        None,
        "mlops.yaml: serving.request.fields.store.type: must be one of",
    ),
    "flight-bad-request-field-type": (
        FLIGHT_DELAY,
        _field_type("flight", "integer"),
        None,
        "mlops.yaml: serving.request.fields.flight.type: must be one of",
    ),
    "template-missing-canned-requests": (
        TEMPLATE,
        _canned_file("serving/missing.json"),
        None,
        "mlops.yaml: serving.swap.canned_requests_file: serving/missing.json does not exist",
    ),
    "template-classification-gate-metric": (
        TEMPLATE,
        _gate_metric("roc_auc"),
        None,
        "mlops.yaml: gate.absolute: roc_auc is not a regression metric (rmse, mae, r2)",
    ),
}


@pytest.mark.parametrize("variant", list(BROKEN))
def test_each_broken_variant_gives_one_problem_naming_file_and_key(variant: str, tmp_path: Path) -> None:
    source, change_yaml, change_module, expected = BROKEN[variant]
    folder = _copy(source, tmp_path)
    if change_yaml is not None:
        _edit_yaml(folder, change_yaml)
    if change_module is not None:
        _edit_module(folder, *change_module)

    problems = check(folder)

    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]


def test_a_canned_request_the_schema_refuses_names_the_file_and_the_request(tmp_path: Path) -> None:
    folder = _copy(TEMPLATE, tmp_path)
    canned_file = folder / "serving" / "canned_requests.json"
    canned = json.loads(canned_file.read_text())
    canned["single"][1]["date"] = "2024-13-01"
    canned_file.write_text(json.dumps(canned))

    problems = check(folder)

    assert len(problems) == 1, problems
    assert problems[0].startswith(
        "serving/canned_requests.json: single[1]: not a valid request for serving.request: date"
    )


def test_a_feature_entity_keys_derives_needs_entity_keys_to_return_it(tmp_path: Path) -> None:
    # day_of_week is no view field and no request field: only entity_keys' output makes it a valid feature.
    folder = _copy(TEMPLATE, tmp_path)
    _edit_module(folder, '        "day_of_week": days.dt.weekday', '        "weekday": days.dt.weekday')

    problems = check(folder)

    assert problems == [
        "mlops.yaml: model.features.numeric: day_of_week is neither a feature view field nor a serving.request "
        "field (nor a column entity_keys returns for the canned requests)"
    ]


def test_a_module_that_fails_to_import_is_one_problem_naming_it_and_the_exception(tmp_path: Path) -> None:
    folder = _copy(TEMPLATE, tmp_path)
    _edit_module(folder, "from __future__ import annotations\n", "from __future__ import annotations\n\n1 / 0\n")

    problems = check(folder)

    assert len(problems) == 1, problems
    assert problems[0].startswith("usecase.py: importing it failed: ZeroDivisionError")


def test_a_suite_that_is_not_json_and_a_stale_training_set_contract_are_reported(tmp_path: Path) -> None:
    folder = _copy(TEMPLATE, tmp_path)
    (folder / "expectations" / "sales.json").write_text("{not json")
    suite_file = folder / "expectations" / "training_set.json"
    suite = json.loads(suite_file.read_text())
    suite["expectations"][0]["kwargs"]["column_list"].remove("history_days")
    suite_file.write_text(json.dumps(suite))

    problems = check(folder)

    assert len(problems) == 2, problems
    assert problems[0].startswith("expectations/sales.json: cannot read it as JSON")
    assert problems[1].startswith(
        "expectations/training_set.json: expectations[0].kwargs.column_list: differs from the training-set contract"
    )
    assert problems[1].endswith("missing: history_days")


def test_a_config_the_loader_refuses_is_the_single_problem(tmp_path: Path) -> None:
    folder = _copy(TEMPLATE, tmp_path)
    _edit_yaml(folder, lambda raw: raw.update(extras={"x": 1}))

    assert check(folder) == [
        "mlops.yaml: extras: unknown section (expected one of " + ", ".join(usecase_config.SECTIONS) + ")"
    ]
    assert check(tmp_path / "nowhere") == ["mlops.yaml: no such file (a use case folder holds mlops.yaml)"]


# -- the command line --------------------------------------------------------------------------------------
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLOPS_PROJECTS"}
    return subprocess.run(
        [sys.executable, "-m", "airflow_mlops", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_check_prints_ok_or_every_problem_and_sets_the_exit_code(tmp_path: Path) -> None:
    broken = _copy(TEMPLATE, tmp_path, "broken")
    _edit_yaml(broken, _set_model("estimator", "xgboost"))

    done = _cli("check", str(FLIGHT_DELAY), str(broken), cwd=tmp_path)

    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ok flight_delay"
    assert len(lines) == 2 and lines[1].startswith(f"{broken}/mlops.yaml: model.estimator: 'xgboost'"), lines


def test_cli_new_creates_a_use_case_that_passes_check_and_refuses_to_overwrite(tmp_path: Path) -> None:
    created = _cli("new", "shop_sales", cwd=tmp_path)  # default: ./examples of the working directory

    target = tmp_path / "examples" / "shop_sales"
    assert created.returncode == 0, created.stderr
    assert "python -m airflow_mlops check examples/shop_sales" in created.stdout
    assert yaml.safe_load((target / "mlops.yaml").read_text())["name"] == "shop_sales"
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "expectations/sales.json",
        "expectations/training_set.json",
        "mlops.yaml",
        "serving/canned_requests.json",
        "usecase.py",
    ]
    checked = _cli("check", str(target), cwd=tmp_path)
    assert (checked.returncode, checked.stdout.strip()) == (0, "ok shop_sales"), checked.stdout + checked.stderr

    (target / "usecase.py").write_text("# mine\n")
    assert main(["new", "shop_sales", "--into", str(tmp_path / "examples")]) == 1
    assert (target / "usecase.py").read_text() == "# mine\n"
    assert main(["new", "Bad-Name", "--into", str(tmp_path)]) == 2
    assert not (tmp_path / "Bad-Name").exists()


def test_new_uses_mlops_projects_when_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_PROJECTS", str(tmp_path / "projects"))

    assert main(["new", "other_sales"]) == 0

    assert check(tmp_path / "projects" / "other_sales") == []


# -- the template's functions on its demo data -------------------------------------------------------------
DAYS = 35


@pytest.fixture(scope="module")
def template_run() -> dict:
    """The template's partitions of 35 demo days, built as the feature stage does (each day with its lookback)."""
    from airflow_mlops.core import features as F
    from airflow_mlops.core.batches import window_periods

    usecase = usecase_config.load(TEMPLATE)
    module = load_module(usecase.module_file)
    spec = F.FeatureSpec.from_usecase(usecase)
    view = usecase.view("store_history")
    days = window_periods("2024-02-04", DAYS)
    frames = {day: {"sales": module.demo_batches(day)["sales.csv"]} for day in days}
    views, labels, raw_views = {}, {}, {}
    for day in days:
        ctx = FeatureContext(
            period=day,
            frames={p: frames[p] for p in F.lookback(day, spec) if p in frames},
            params=spec.params,
            config=usecase,
        )
        built = module.build_features(ctx)
        assert set(built) == {view.name}
        raw_views[day] = built[view.name]
        views[day] = F.check_view(built[view.name], view, spec)
        labels[day] = F.check_labels(module.label_rows(ctx), spec, day)
    return {
        "usecase": usecase,
        "module": module,
        "spec": spec,
        "view": view,
        "days": days,
        "frames": frames,
        "views": views,
        "raw_views": raw_views,
        "labels": labels,
    }


def test_template_demo_batches_are_deterministic_per_day() -> None:
    module = load_module(TEMPLATE / "usecase.py")
    first, again = module.demo_batches("2024-02-10")["sales.csv"], module.demo_batches("2024-02-10")["sales.csv"]
    other = module.demo_batches("2024-02-11")["sales.csv"]

    assert first.equals(again)
    assert list(first.columns) == list(module.COLUMNS)
    assert list(first["store"]) == list(module.STORES)
    assert set(first["date"]) == {"2024-02-10"}
    assert not first["sales"].equals(other["sales"])
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        module.demo_batches("2024-02")


def test_template_frames_match_their_declarations(template_run: dict) -> None:
    spec, view = template_run["spec"], template_run["view"]
    for day in template_run["days"]:
        stores = set(template_run["frames"][day]["sales"]["store"])
        frame, labels = template_run["views"][day], template_run["labels"][day]
        # One view row per store of the day, for the slot of the next day; one label row per store of the day.
        today = date.fromisoformat(day)
        slot = (today + timedelta(days=1)).strftime("%Y%m%d")
        assert sorted(frame[view.key]) == sorted(f"{s}@{slot}" for s in stores)
        assert list(labels.columns[:3]) == [spec.id_column, "event_timestamp", spec.label]
        assert sorted(labels[spec.id_column]) == sorted(f"{s}@{today.strftime('%Y%m%d')}" for s in stores)
        assert (labels[spec.period_column] == day).all()
        assert str(frame[view.timestamp].dtype) == "datetime64[us, UTC]"
        for name, dtype in view.fields.items():
            assert str(frame[name].dtype) == dtype


def test_template_labels_read_only_earlier_feature_rows(template_run: dict) -> None:
    """No leakage: every view row a label row may use (same key) is stamped at or before its event time, and a
    label's own day's sales appear in no view row usable before the next day."""
    import pandas as pd

    view = template_run["view"]
    rows = pd.concat(template_run["views"].values(), ignore_index=True)
    labels = pd.concat(template_run["labels"].values(), ignore_index=True)
    joined = labels.merge(rows, on=view.key, how="inner", suffixes=("", "_view"))

    first_day = template_run["labels"][template_run["days"][0]]
    assert len(joined) == len(labels) - len(first_day)  # every label row but the first day's finds its row
    assert (joined[view.timestamp] <= joined["event_timestamp"]).all()
    # Derived from the data: the row read on day d holds the sales of d-1, never those of d (the label).
    assert (joined["sales_lag_1d"] != joined["next_day_sales"]).all()
    sales = pd.concat(
        [f["sales"].assign(day=f["sales"]["date"]) for f in template_run["frames"].values()], ignore_index=True
    ).set_index(["store", "day"])["sales"]
    previous = (joined["event_timestamp"] - pd.Timedelta(days=1)).dt.strftime("%Y-%m-%d")
    expected = [sales[(s, d)] for s, d in zip(joined["store"], previous, strict=True)]
    assert joined["sales_lag_1d"].tolist() == pytest.approx(expected)


def test_template_features_ignore_later_batches(template_run: dict) -> None:
    from airflow_mlops.core import features as F

    module, spec, usecase = template_run["module"], template_run["spec"], template_run["usecase"]
    day = template_run["days"][10]
    every = template_run["frames"]  # includes days after `day`
    ctx = FeatureContext(period=day, frames=every, params=spec.params, config=usecase)

    built = F.check_view(module.build_features(ctx)["store_history"], template_run["view"], spec)

    expected = template_run["views"][day]
    assert built.drop(columns=["store"]).equals(expected.drop(columns=["store"]))


def test_template_windows_are_computed_from_earlier_days(template_run: dict) -> None:
    import pandas as pd

    day = template_run["days"][-1]
    frames = [template_run["frames"][d]["sales"] for d in template_run["days"]]
    history = pd.concat(frames, ignore_index=True)
    row = template_run["views"][day].set_index("store").loc["S03"]
    store = history[history["store"] == "S03"].set_index("date")["sales"]
    week = store.loc[sorted(store.index)[-7:]]
    long = store.loc[sorted(store.index)[-14:]]

    assert row["sales_lag_1d"] == pytest.approx(store[day])
    assert row["sales_mean_7d"] == pytest.approx(week.mean())
    assert row["sales_mean_long"] == pytest.approx(long.mean())
    assert row["sales_lag_7d"] == pytest.approx(store[sorted(store.index)[-7]])
    assert row["history_days"] == 14


def test_template_requests_get_the_ids_and_row_features_of_the_label_rows(template_run: dict) -> None:
    from airflow_mlops.core import request_schema

    usecase, module, spec = template_run["usecase"], template_run["module"], template_run["spec"]
    day = template_run["days"][5]
    request_spec = usecase.serving["request"]
    model = request_schema.request_model(request_spec, base_dir=usecase.folder)
    requests = [model.model_validate({"store": f" {s.lower()} ", "date": day}) for s in module.STORES]
    rows = request_schema.request_frame(requests, request_spec)

    keys = module.entity_keys(rows, FeatureContext(period=day, params=spec.params, config=usecase))

    labels = template_run["labels"][day].set_index(spec.id_column)
    assert list(keys.index) == list(rows.index)
    columns = [spec.id_column, *spec.join_keys(), *spec.row_features()]
    assert set(columns) <= set(keys.columns)
    expected = labels.loc[keys[spec.id_column], [c for c in columns if c != spec.id_column]].reset_index()
    assert keys.loc[:, columns].reset_index(drop=True).astype(str).equals(expected.loc[:, columns].astype(str))


def test_template_outcomes_are_the_labels_of_the_day(template_run: dict) -> None:
    usecase, module, spec = template_run["usecase"], template_run["module"], template_run["spec"]
    day = template_run["days"][3]
    ctx = FeatureContext(period=day, frames={day: template_run["frames"][day]}, params=spec.params, config=usecase)

    got = module.outcomes(ctx)

    labels = template_run["labels"][day]
    assert got[spec.id_column].tolist() == labels[spec.id_column].tolist()
    assert got[spec.label].tolist() == labels[spec.label].tolist()


def test_template_suite_accepts_a_demo_batch_and_refuses_a_broken_one(template_run: dict) -> None:
    from airflow_mlops.core import validation

    usecase = template_run["usecase"]
    suite = validation.load_suite(usecase.source.suites["sales.csv"])
    day = template_run["days"][0]
    good = template_run["frames"][day]["sales"]
    broken = good.assign(sales=good["sales"].where(good.index != 2, -5.0))
    parameters = validation.batch_parameters(day)

    passed = validation.validate_batch(f"{day}-good", {"sales": good}, {"sales": suite}, parameters)
    failed = validation.validate_batch(f"{day}-bad", {"sales": broken}, {"sales": suite}, parameters)

    assert passed.success, [f.expectation for s in passed.suites for f in s.failures]
    assert not failed.success
    assert [(f.expectation, f.column) for s in failed.suites for f in s.failures] == [
        ("expect_column_values_to_be_between", "sales")
    ]


def test_template_training_set_trains_a_model_its_gate_approves(template_run: dict) -> None:
    """The demo's first model is approved: a point-in-time join of the label rows with the view (as Feast does:
    the newest row of the key stamped at or before the event, within the TTL), finished to the training-set
    contract, passes the template's training-set suite; a model fitted on it passes the template's gate."""
    import pandas as pd

    from airflow_mlops.core import evaluation, gate, training, validation
    from airflow_mlops.core import features as F

    usecase, spec, view = template_run["usecase"], template_run["spec"], template_run["view"]
    rows = pd.concat(template_run["views"].values(), ignore_index=True).drop(columns=["store"])
    labels = pd.concat(template_run["labels"].values(), ignore_index=True)
    joined = labels.merge(rows, on=view.key, how="left")
    usable = (joined[view.timestamp] <= joined["event_timestamp"]) & (
        joined[view.timestamp] > joined["event_timestamp"] - pd.Timedelta(hours=view.ttl_hours)
    )
    joined.loc[~usable, list(view.fields)] = None
    training_set = F.finish_training_set(joined, spec)

    assert list(training_set.columns) == spec.training_columns
    suite = validation.load_suite(usecase.folder / "expectations" / "training_set.json")
    report = validation.validate_batch("training-set", {"training_set": training_set}, {"training_set": suite}, {})
    assert report.success, [f.expectation for s in report.suites for f in s.failures]

    config = training.TrainingConfig.from_dict(usecase.training_config_dict())
    result = training.train(training_set, config)
    holdout = result.split.holdout
    assert len(result.split.holdout_months) == usecase.model["holdout_periods"]
    scores = training.predict_scores(result.model, holdout, config)
    evaluated = evaluation.evaluate(
        holdout, scores, label=usecase.label, slices=usecase.model["slices"], task=usecase.task
    )
    decision = gate.decide(evaluated, None, gate.GatePolicy.from_dict(usecase.gate))

    assert decision.approved, decision.reasons


@pytest.mark.parametrize(
    "text, message", [("name: [unclosed", "cannot parse it"), ("- a\n- b\n", "must hold a mapping")]
)
def test_every_config_file_is_read_by_one_reader_that_names_the_file(tmp_path, text, message):
    from airflow_mlops.core import gate, retraining_policy, training

    for loader in (usecase_config.load, gate.load_policy, retraining_policy.load_policy, training.load_config):
        target = tmp_path / "mlops.yaml"
        target.write_text(text)
        with pytest.raises(ValueError, match=message) as raised:
            loader(target)
        assert str(target) in str(raised.value), loader
