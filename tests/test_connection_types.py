"""The provider's connection types: registered through its provider info, so that the Airflow UI's connection form
offers them (hook name, relabeled and hidden fields, the extra fields), and read back by the hooks that own them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_mlops.provider_info import get_provider_info

ROOT = Path(__file__).resolve().parents[1]
OURS = {
    "mlflow": ("airflow_mlops.hooks.mlflow_registry.MlflowHook", "mlflow_conn_id"),
    "bentoml": ("airflow_mlops.hooks.bentoml_serving.BentoServingHook", "bentoml_conn_id"),
    "feast": ("airflow_mlops.hooks.feast_store.FeastHook", "feast_conn_id"),
}

# Run in a fresh interpreter: ProvidersManager is a process-wide singleton that caches what it discovered.
_PROBE = """
import json
from airflow.providers_manager import ProvidersManager
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

ours = {"mlflow", "bentoml", "feast"}
pm = ProvidersManager()
hooks = {t: pm.hooks[t] for t in ours if t in pm.hooks}
print(json.dumps({
    "hooks": {t: [h.hook_class_name, h.connection_id_attribute_name, h.hook_name, h.package_name] for t, h in hooks.items()},
    "widgets": sorted(k for k in pm.connection_form_widgets if k.split("__")[1] in ours),
    "behaviours": {t: pm.field_behaviours.get(t) for t in ours},
    "ui": {m.connection_type: m.model_dump() for m in HookMetaService.hook_meta_data() if m.connection_type in ours},
}))
"""


@pytest.fixture(scope="module")
def discovered() -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_provider_info_declares_each_connection_type_with_a_class_that_matches() -> None:
    import importlib

    declared = {c["connection-type"]: c for c in get_provider_info()["connection-types"]}
    assert set(declared) == set(OURS)
    for conn_type, entry in declared.items():
        module, _, name = entry["hook-class-name"].rpartition(".")
        hook = getattr(importlib.import_module(module), name)
        assert (hook.conn_type, hook.conn_name_attr, hook.hook_name) == (
            conn_type,
            OURS[conn_type][1],
            entry["hook-name"],
        )


def test_providers_manager_registers_our_hooks_fields_and_behaviours(discovered: dict) -> None:
    for conn_type, (hook_class, conn_attr) in OURS.items():
        assert discovered["hooks"][conn_type][:2] == [hook_class, conn_attr], conn_type
        assert discovered["hooks"][conn_type][3] == "airflow-mlops"
    assert "extra__mlflow__tracking_uri" in discovered["widgets"]
    assert "extra__bentoml__url" in discovered["widgets"]
    assert {"extra__feast__db", "extra__feast__online_store"} <= set(discovered["widgets"])
    assert discovered["behaviours"]["mlflow"]["hidden_fields"] == ["login", "password"]
    assert discovered["behaviours"]["feast"]["relabeling"]["host"] == "Redis host"


def test_the_ui_connection_form_offers_them(discovered: dict) -> None:
    """What the UI's ``/ui/connections/hook_meta`` serves: the form of each of our connection types."""
    ui = discovered["ui"]
    assert set(ui) == set(OURS)
    assert ui["mlflow"]["hook_name"] == "MLflow"
    assert ui["mlflow"]["standard_fields"]["password"]["hidden"] is True
    assert ui["mlflow"]["extra_fields"]["tracking_uri"]["schema"]["title"] == "Tracking URI"
    assert ui["bentoml"]["standard_fields"]["password"]["title"] == "Admin token"
    assert ui["feast"]["standard_fields"]["url_schema"]["hidden"] is True
    assert set(ui["feast"]["extra_fields"]) == {"db", "online_store"}


def test_hooks_read_the_fields_the_form_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_mlops.hooks.bentoml_serving import BentoServingHook
    from airflow_mlops.hooks.feast_store import FeastHook
    from airflow_mlops.hooks.mlflow_registry import MlflowHook

    def conn(name: str, **fields) -> None:
        monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", json.dumps(fields))

    conn("mlops_mlflow", conn_type="mlflow", host="mlflow.internal", port=5000, extra={"ui_url": "https://ml.example"})
    conn("mlops_serving", conn_type="bentoml", password="s3cret", extra={"url": "http://serving:3000/"})
    conn("mlops_feast", conn_type="feast", host="redis", port=6380, password="pw", extra={"db": 2})

    mlflow = MlflowHook(mlflow_conn_id="mlops_mlflow")
    assert (mlflow.tracking_uri, mlflow.ui_url) == ("http://mlflow.internal:5000", "https://ml.example")
    serving = BentoServingHook(usecase=ROOT / "examples" / "seattle_weather", bentoml_conn_id="mlops_serving")
    assert (serving.url, serving.token) == ("http://serving:3000", "s3cret")
    feast = FeastHook(usecase=ROOT / "examples" / "seattle_weather", feast_conn_id="mlops_feast")
    assert feast.online_store_config() == {"type": "redis", "connection_string": "redis:6380,db=2,password=pw"}
