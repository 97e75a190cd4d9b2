"""Tuning for the support-network cache and metrics (env prefix ``TIMEBANK_NETWORK_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NetworkSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIMEBANK_NETWORK_", extra="ignore")

    # Snapshots kept in this process (one per community and date window), least recently used
    # dropped first.
    cache_entries: int = Field(default=32, ge=1)
    # A snapshot older than this is rebuilt even when nothing seems to have changed: the
    # safety net for a posting committed late by another instance (see docs/network.md).
    max_age_seconds: int = Field(default=900, ge=1)
    # Betweenness is exact while members x ties <= this; above it, it is estimated from
    # ceil(limit / ties) source pivots (never fewer than ``betweenness_min_pivots``).
    betweenness_work_limit: int = Field(default=25_000_000, ge=1)
    betweenness_min_pivots: int = Field(default=100, ge=1)
    # Confidence of the error bound reported with a sampled betweenness.
    betweenness_confidence: float = Field(default=0.95, gt=0, lt=1)
