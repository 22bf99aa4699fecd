"""The typed argument a use case's functions are called with (TFX's ``FnArgs`` idea)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class FeatureContext:
    """What ``build_features``, ``label_rows``, ``entity_keys`` and ``outcomes`` receive.

    :param period: the batch being built, ``"2013-03"`` (monthly) or ``"2013-03-05"`` (daily).
    :param frames: ``{period: {file stem: DataFrame}}``: this period's validated frames and up to
        ``features.lookback_periods`` earlier ones (a missing earlier period is simply absent).
    :param params: ``features.params`` of ``mlops.yaml``.
    :param config: the whole typed use-case config (``airflow_mlops.usecase.config.UseCase``), or None in a
        unit test of a single function.
    """

    period: str
    frames: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    config: Any = None

    @property
    def current(self) -> dict[str, pd.DataFrame]:
        """This period's frames (``{file stem: DataFrame}``)."""
        try:
            return self.frames[self.period]
        except KeyError:
            raise ValueError(f"no validated frames for {self.period}") from None

    def earlier(self) -> list[str]:
        """The earlier periods present, oldest first."""
        return sorted(p for p in self.frames if p < self.period)
