from __future__ import annotations

import enum
from datetime import date, datetime

from pydantic import BaseModel, Field

from app.core.schemas import PublicId
from app.network.schemas import WindowRead


class Period(enum.StrEnum):
    week = "week"
    month = "month"
    quarter = "quarter"
    year = "year"


class ActivityTable(enum.StrEnum):
    periods = "periods"
    retention = "retention"


class PeriodActivity(BaseModel):
    period: str = Field(description="`2024-03` (month), `2024-W09` (ISO week), `2024-Q1`, `2024`")
    start: date
    end: date
    exchanges: int = Field(description="Exchanges whose hours stand, by day of service")
    minutes: int = Field(description="Minutes given in those exchanges")
    hours: float = Field(description="minutes / 60, rounded to 2 places (for display)")
    active_members: int = Field(description="Members who gave or received in the period")
    new_members: int = Field(description="Members who joined in the period")


class Cohort(BaseModel):
    cohort: str = Field(description="The period the members joined in")
    members: int
    active: list[int] = Field(
        description="active[k]: cohort members who gave or received in the k-th period after "
        "joining (k = 0 is the joining period), up to the window's last period"
    )
    retention: list[float | None] = Field(description="active[k] / members")


class ActivityReport(BaseModel):
    community_id: PublicId
    period: Period
    window: WindowRead
    periods: list[PeriodActivity]
    retention: list[Cohort]


class Indicator(BaseModel):
    key: str
    label: str
    value: float | int | None = Field(description="null when undefined (nobody to count)")
    unit: str = Field(description="`share` (0..1), `count`, `index` (0..1) or `minutes`")
    definition: str


class Principle(BaseModel):
    principle: str = Field(
        description="assets, capabilities, mutuality, networks, blurred_roles, catalysts"
    )
    title: str
    indicators: list[Indicator]


class CategoryGiven(BaseModel):
    category: str
    exchanges: int
    minutes: int
    givers: int


class CoproductionReport(BaseModel):
    community_id: PublicId
    window: WindowRead
    computed_at: datetime
    age_seconds: float
    stale: bool
    principles: list[Principle]
    categories: list[CategoryGiven] = Field(
        description="Help given by category, most minutes first"
    )
