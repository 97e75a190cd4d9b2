"""Pydantic building blocks shared by every feature's schemas."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    model_validator,
)

# Ids travel as opaque strings.
PublicId = Annotated[uuid.UUID, PlainSerializer(str, return_type=str, when_used="json")]


class InputModel(BaseModel):
    """Request bodies: a misspelt field is a 422, not silently ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class OutputModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def _normalise_tag(value: str) -> str:
    return " ".join(value.lower().split())


Tag = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=40),
    AfterValidator(_normalise_tag),
]


def _dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


TagList = Annotated[list[Tag], Field(max_length=30), AfterValidator(_dedupe)]


class PatchModel(InputModel):
    """A partial update: absent fields stay as they are; ``null`` is accepted only for the
    fields named in ``nullable_fields`` (it clears them)."""

    nullable_fields: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _no_null_for_required(self) -> Self:
        for name in self.model_fields_set:
            if getattr(self, name) is None and name not in self.nullable_fields:
                raise ValueError(f"{name} cannot be null; leave it out to keep it unchanged")
        return self

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)
