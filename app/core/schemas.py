"""Pydantic building blocks shared by every feature's schemas."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, ClassVar, Self, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

# Ids travel as opaque strings. pydantic-core writes a UUID as its canonical string natively;
# the schema says only "string" for responses, so clients do not come to rely on the format.
PublicId = Annotated[uuid.UUID, WithJsonSchema({"type": "string"}, mode="serialization")]


# Values that hold no text: a NUL check skips them without a call.
_NO_TEXT = frozenset({int, float, bool, type(None)})
_NUL_MESSAGE = "text may not contain NUL (\\u0000) characters"


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def _holds_input_model(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, InputModel):
        return True
    return any(_holds_input_model(arg) for arg in get_args(annotation))


def nested_input_keys(model: type[BaseModel]) -> frozenset[str]:
    """The keys (names and aliases) of ``model``'s fields that hold other input models."""
    return frozenset(
        key
        for name, info in model.model_fields.items()
        if _holds_input_model(info.annotation)
        for key in (name, info.alias or name)
    )


class InputModel(BaseModel):
    """Request bodies: a misspelt field is a 422, not silently ignored.

    No text anywhere in a body may hold a NUL character: PostgreSQL refuses it in text and
    jsonb (a 500 if it got that far) and SQLite's C string functions stop at it. Each model
    looks at its own fields; a field holding other input models is left to them, so a nested
    body (a batch of transactions of entries) is walked once, not once per level.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    # nested_input_keys of each class, set when the class is made.
    _nested_input_keys: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._nested_input_keys = nested_input_keys(cls)

    @model_validator(mode="before")
    @classmethod
    def _no_nul_characters(cls, data: Any) -> Any:
        # Called once for every object of a body (3,000 times for a batch of 1,000
        # transfers): plain strings and numbers are looked at inline, without a call.
        if data.__class__ is not dict:
            if _has_nul(data):
                raise ValueError(_NUL_MESSAGE)
            return data
        nested = cls._nested_input_keys
        for key, value in data.items():
            if ("\x00" in key) if key.__class__ is str else _has_nul(key):
                raise ValueError(_NUL_MESSAGE)
            kind = value.__class__
            if kind is str:
                if "\x00" in value:
                    raise ValueError(_NUL_MESSAGE)
            elif kind not in _NO_TEXT and key not in nested and _has_nul(value):
                raise ValueError(_NUL_MESSAGE)
        return data


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
