"""A model card for one registered version, as Markdown and as a small self-contained HTML page.

``build_card`` turns plain facts (gathered from MLflow and the lake by ``hooks.mlflow_model_card``) into sections:
what the model is, its intended use, the data it learned from (window, hashes), its features, its hold-out metrics
overall and per slice beside the champion's, the gate's decision, the approval, drift at training time, its known
limits, and the evidence of each MLOps principle for this one model. A fact that was not recorded is said to be
missing, never made up. Both renderings come from one list of sections; every value is escaped in the HTML.

No Airflow or MLflow import: tests build cards from small literals.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: The card's sections, in order (every card has each of them, saying "not recorded" where a fact is missing).
SECTIONS = (
    "Model",
    "Intended use",
    "Training data",
    "Features",
    "Metrics",
    "Gate decision",
    "Approval",
    "Drift at training time",
    "Known limits",
    "MLOps principles: the evidence for this model",
)
#: The principles of the MLOps architecture (Kreuzberger, Kühl & Hirschl, 2023) a card gives evidence of, as
#: (reference, the architecture's name, what the card shows of it).
PRINCIPLES = (
    ("P4", "versioning of data, model, code", "versioned data, code and model"),
    ("P7", "ML metadata tracking", "tracked run"),
    ("stages 2, 4", "data validation", "validated data"),
    ("P6", "continuous training and evaluation", "gated evaluation"),
    ("P8", "continuous monitoring", "monitored serving"),
    ("P9", "feedback loops", "feedback path"),
)
MISSING = "not recorded"
NOT_MEASURED = "not measured at training time"
AUTO_APPROVAL = "automatic (approval: auto)"


@dataclass
class Section:
    """A titled part of the card: blocks of ``("p", text)``, ``("ul", [text])`` or ``("table", head, rows)``."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def p(self, text: str) -> Section:
        self.blocks.append(("p", text))
        return self

    def ul(self, items: list[str]) -> Section:
        if items:
            self.blocks.append(("ul", list(items)))
        return self

    def table(self, head: list[str], rows: list[list[Any]]) -> Section:
        if rows:
            self.blocks.append(("table", list(head), [[fmt(c) for c in row] for row in rows]))
        return self


@dataclass(frozen=True)
class ModelCard:
    """A rendered card: its title, Markdown and HTML, and the sections they were rendered from."""

    title: str
    markdown: str
    html: str
    sections: tuple[str, ...]


def fmt(value: Any) -> str:
    """A value as the card shows it: floats to 4 decimals, None as ``–``, lists joined, mappings as JSON."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value) or "–"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def when(ms: Any) -> str:
    """An MLflow timestamp (ms since the epoch) as ``YYYY-MM-DD HH:MM:SS UTC``."""
    if not ms:
        return MISSING
    return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def build_card(facts: dict[str, Any]) -> ModelCard:
    """The card of one version from its facts (``hooks.mlflow_model_card.card_facts`` documents the keys).

    :param facts: model, usecase, run, training_set, validated, evaluation, gate, infra_validation, approval,
        drift, monitoring, links.
    """
    model = facts.get("model") or {}
    title = f"Model card: {model.get('name')} version {model.get('version')}"
    sections = [
        _model(facts),
        _intended_use(facts),
        _training_data(facts),
        _features(facts),
        _metrics(facts),
        _gate(facts),
        _approval(facts),
        _drift(facts),
        _limits(facts),
        _principles(facts),
    ]
    return ModelCard(title, to_markdown(title, sections), to_html(title, sections), tuple(s.title for s in sections))


# -- sections --------------------------------------------------------------------------------------------------
def _model(facts: dict) -> Section:
    model, run, links = facts.get("model") or {}, facts.get("run") or {}, facts.get("links") or {}
    tags = run.get("tags") or {}
    return Section("Model").ul(
        [
            f"Registered model: {model.get('name')}, version {model.get('version')} ({model.get('status') or MISSING})",
            f"Aliases now: {fmt(model.get('aliases'))}",
            f"Registered: {when(model.get('created'))}",
            f"Task: {tags.get('mlops.model.task') or MISSING}; estimator: {tags.get('mlops.model.type') or MISSING}",
            f"Model URI: {model.get('source') or MISSING}",
            f"Training run: {run.get('run_id') or MISSING} (experiment {run.get('experiment_id') or MISSING})",
            *[f"{label}: {url}" for label, url in links.items() if url],
        ]
    )


def _intended_use(facts: dict) -> Section:
    usecase = facts.get("usecase")
    section = Section("Intended use")
    if not usecase:
        return section.p(f"No use case declares this model: its intended use is {MISSING}.")
    section.p(usecase.get("description") or f"The use case {usecase.get('name')} gives no description.")
    return section.ul(
        [
            f"Use case: {usecase.get('name')} ({usecase.get('task')}, one batch per {usecase.get('period') or '–'})",
            f"Predicts: {usecase.get('label') or MISSING}",
        ]
    )


def _training_data(facts: dict) -> Section:
    tags = (facts.get("run") or {}).get("tags") or {}
    params = (facts.get("run") or {}).get("params") or {}
    ts = facts.get("training_set") or {}
    section = Section("Training data").ul(
        [
            f"Training window: {_months(tags.get('mlops.train.months'))} ({params.get('train_rows', '–')} rows)",
            f"Hold-out: {_months(tags.get('mlops.holdout.months'))} ({params.get('holdout_rows', '–')} rows)",
            f"Training set: {tags.get('mlops.training_set.uri') or MISSING}",
            f"Training set sha256: {tags.get('mlops.training_set.sha256') or MISSING} "
            f"({tags.get('mlops.training_set.rows') or '–'} rows)",
            f"Feature views: {tags.get('mlops.feature_views') or MISSING}",
        ]
    )
    if ts.get("validation"):
        section.ul([f"Training set validation: {fmt(ts['validation'])}"])
    partitions = ts.get("feature_partitions") or {}
    validated = {v["period"]: v for v in facts.get("validated") or []}
    periods = sorted(set(ts.get("periods") or []) | set(partitions) | set(validated))
    rows = []
    for period in periods:
        batch = validated.get(period) or {}
        rows.append([period, partitions.get(period), batch.get("batch_sha256"), batch.get("success")])
    return section.table(["period", "feature partition sha256", "validated batch sha256", "batch passed"], rows)


def _months(text: str | None) -> str:
    return ", ".join(m for m in (text or "").split(",") if m) or MISSING


def _features(facts: dict) -> Section:
    params = (facts.get("run") or {}).get("params") or {}
    categorical = [f for f in str(params.get("features.categorical") or "").split(",") if f]
    numeric = [f for f in str(params.get("features.numeric") or "").split(",") if f]
    section = Section("Features")
    if not categorical and not numeric:
        return section.p(f"The run's features are {MISSING}.")
    return section.ul(
        [f"Categorical ({len(categorical)}): {fmt(categorical)}", f"Numeric ({len(numeric)}): {fmt(numeric)}"]
    )


def _metrics(facts: dict) -> Section:
    evaluation = facts.get("evaluation") or {}
    candidate, champion = evaluation.get("candidate") or {}, evaluation.get("champion") or {}
    champ_version = evaluation.get("champion_version")
    section = Section("Metrics")
    if not candidate:
        return section.p(f"The hold-out evaluation is {MISSING}.")
    against = f"champion v{champ_version}" if champion else "no champion at registration"
    section.p(f"On the hold-out, this version beside the champion at registration ({against}), same rows.")
    overall = candidate.get("overall") or {}
    reference = champion.get("overall") or {}
    section.table(["metric", "this version", "champion"], [[k, v, reference.get(k)] for k, v in overall.items()])
    names = [k for k in overall if k != "n"]
    rows = []
    for column, values in sorted((candidate.get("slices") or {}).items()):
        for value, metrics in sorted(values.items()):
            champ = ((champion.get("slices") or {}).get(column) or {}).get(value)
            pairs = [fmt(metrics.get(m)) + (f" / {fmt(champ.get(m))}" if champ else "") for m in names]
            rows.append([f"{column}={value}", metrics.get("n"), *pairs])
    if rows:
        section.p("Per slice" + (" (this version / champion):" if champion else ":"))
    return section.table(["slice", "n", *names], rows)


def _gate(facts: dict) -> Section:
    gate = facts.get("gate") or {}
    section = Section("Gate decision")
    if not gate:
        return section.p(f"The gate's decision is {MISSING}.")
    verdict = "FORCE-BLESSED" if gate.get("forced") else ("APPROVED" if gate.get("approved") else "REJECTED")
    section.p(f"{verdict} under policy sha256 {gate.get('policy_hash') or MISSING}.")
    if gate.get("forced"):
        section.p(f"Forced: {gate.get('force_reason') or MISSING}")
    return section.ul([str(r) for r in gate.get("reasons") or []])


def _approval(facts: dict) -> Section:
    approval = facts.get("approval") or {}
    section = Section("Approval")
    if not approval:
        return section.p(f"{AUTO_APPROVAL}: no reviewer step recorded for this version.")
    return section.table(["field", "value"], [[k, v] for k, v in sorted(approval.items())])


def _drift(facts: dict) -> Section:
    drift = facts.get("drift") or {}
    section = Section("Drift at training time")
    if not drift:
        return section.p(f"Drift was {NOT_MEASURED}.")
    return section.table(["measure", "value"], [[k, v] for k, v in sorted(drift.items())])


def known_limits(facts: dict) -> list[str]:
    """The configured limits (``model.known_limits``) and those the evaluation shows: a small hold-out, slices
    below the gate's ``min_slice_size``, undefined metrics, no champion to compare with, an overridden gate."""
    usecase = facts.get("usecase") or {}
    limits = [str(x) for x in usecase.get("known_limits") or []]
    evaluation = facts.get("evaluation") or {}
    candidate = evaluation.get("candidate") or {}
    holdout = candidate.get("holdout") or {}
    n = (candidate.get("overall") or {}).get("n")
    if n is not None:
        limits.append(f"Judged on a hold-out of {n} rows ({fmt(holdout.get('holdout_months'))}).")
    floor = usecase.get("min_slice_size")
    small, undefined = [], []
    for column, values in sorted((candidate.get("slices") or {}).items()):
        for value, metrics in sorted(values.items()):
            if floor and (metrics.get("n") or 0) < floor:
                small.append(f"{column}={value} (n={metrics.get('n')})")
            if any(v is None for k, v in metrics.items() if k != "n"):
                undefined.append(f"{column}={value}")
    if small:
        limits.append(f"Slices below min_slice_size={floor}, not judged by the gate: {', '.join(small)}.")
    if undefined:
        limits.append(f"Slices with an undefined metric (too few rows or one class): {', '.join(undefined)}.")
    if candidate and not evaluation.get("champion"):
        limits.append("No champion at registration: judged on the absolute thresholds only.")
    if (facts.get("gate") or {}).get("forced"):
        limits.append(
            f"The gate's decision was overridden by hand (force-blessed: {facts['gate'].get('force_reason')})."
        )
    return limits


def _limits(facts: dict) -> Section:
    limits = known_limits(facts)
    return Section("Known limits").ul(limits) if limits else Section("Known limits").p("None recorded.")


def principle_evidence(facts: dict) -> list[tuple[str, str, str, bool]]:
    """(reference, principle, evidence, present) of each of ``PRINCIPLES`` for this version."""
    run = facts.get("run") or {}
    tags, model = run.get("tags") or {}, facts.get("model") or {}
    validated = facts.get("validated") or []
    gate, infra = facts.get("gate") or {}, facts.get("infra_validation") or {}
    monitoring, usecase = facts.get("monitoring") or {}, facts.get("usecase") or {}
    data_sha, commit = tags.get("mlops.training_set.sha256"), tags.get("mlops.git.commit")
    versioned = (
        f"data sha256 {data_sha or MISSING}; code git {commit or MISSING}"
        f"{' (dirty tree)' if tags.get('mlops.git.dirty') == 'true' else ''}; config sha256 "
        f"{tags.get('mlops.config.sha256') or MISSING}; model {model.get('name')} v{model.get('version')}"
    )
    airflow = "/".join(tags.get(f"mlops.airflow.{k}", "?") for k in ("dag_id", "run_id", "task_id"))
    tracked = f"MLflow run {run.get('run_id') or MISSING} written by Airflow task {airflow}"
    passed = [v["period"] for v in validated if v.get("success")]
    checked = (facts.get("training_set") or {}).get("validation")
    valid = f"validated batches {fmt(passed)}" if passed else "no validated batch recorded for the window"
    valid += f"; training set checked: {fmt(checked)}" if checked else ""
    gated = (
        f"{len(gate.get('reasons') or [])} reason(s), policy {str(gate.get('policy_hash') or MISSING)[:12]}, "
        f"against {('champion v' + str(gate['champion_version'])) if gate.get('champion_version') else 'floors only'}"
        if gate
        else MISSING
    )
    serving = "infra validation " + (("passed" if infra.get("approved") else "failed") if infra else "not yet run")
    serving += f"; {len(monitoring)} monitoring check(s) tagged" if monitoring else "; no monitoring check yet"
    policy = (usecase.get("monitoring") or {}).get("policy")
    feedback = (
        f"retraining policy {fmt(sorted(policy))} requests retraining (Asset {usecase.get('name')}.retrain_requested)"
        if policy
        else "no retraining policy configured"
    )
    evidence = [
        (versioned, bool(data_sha and commit)),
        (tracked, bool(run.get("run_id"))),
        (valid, bool(passed or checked)),
        (gated, bool(gate)),
        (serving, bool(infra or monitoring)),
        (feedback, bool(policy)),
    ]
    return [
        (ref, f"{shown} ({name})", text, ok)
        for (ref, name, shown), (text, ok) in zip(PRINCIPLES, evidence, strict=True)
    ]


def _principles(facts: dict) -> Section:
    rows = [[pid, name, "yes" if ok else "no", evidence] for pid, name, evidence, ok in principle_evidence(facts)]
    return Section(SECTIONS[-1]).table(["#", "principle", "evidenced", "evidence"], rows)


# -- rendering -------------------------------------------------------------------------------------------------
def _md(text: str) -> str:
    """Text for Markdown: ``<``, ``>`` and ``&`` as entities, so a renderer that passes HTML through shows them."""
    return html.escape(str(text), quote=False)


def _md_cell(text: str) -> str:
    return _md(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, sections: list[Section]) -> str:
    """The sections as Markdown (HTML's special characters as entities; a table's ``|`` and newlines escaped)."""
    out = [f"# {_md(title)}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if block[0] == "p":
                out += [_md(block[1]), ""]
            elif block[0] == "ul":
                out += [f"- {_md_cell(item)}" for item in block[1]] + [""]
            else:
                head, rows = block[1], block[2]
                out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows] + [""]
    return "\n".join(out)


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:16px 24px;color:#1a1a1a;max-width:1100px}"
    "h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:22px}"
    "table{border-collapse:collapse;font-size:.9rem}th,td{border-bottom:1px solid #eee;padding:3px 9px;"
    "text-align:left;vertical-align:top}th{background:#f6f6f6}"
)


def to_html(title: str, sections: list[Section]) -> str:
    """The sections as one HTML page with inline style, no script and no external asset; every value escaped."""
    e = html.escape
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for section in sections:
        out.append(f"<section><h2>{e(section.title)}</h2>")
        for block in section.blocks:
            if block[0] == "p":
                out.append(f"<p>{e(block[1])}</p>")
            elif block[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in block[1]) + "</ul>")
            else:
                head = "".join(f"<th>{e(h)}</th>" for h in block[1])
                rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block[2])
                out.append(f"<table><tr>{head}</tr>{rows}</table>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)
