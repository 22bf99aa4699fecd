"""Exceptions the suite raises on purpose, each naming what failed."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException


class BatchValidationError(AirflowFailException):
    """A batch failed its expectation suites. It was quarantined with its report; retrying cannot help."""


class BatchNotFoundError(AirflowFailException):
    """A batch that was asked for by name is neither in ``landing/`` nor in ``raw/``."""


class PromotionConflictError(AirflowFailException):
    """The champion alias moved since the gate compared against it, or a concurrent promotion won; nothing moved."""


class TrainingSetError(AirflowFailException):
    """A training-set snapshot is missing, uncommitted, or its bytes no longer match its manifest."""
