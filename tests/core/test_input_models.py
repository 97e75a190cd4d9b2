"""Input models refuse NUL characters anywhere in a body, and know which of their fields hold
other input models (those check themselves)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import Field, ValidationError

from app.core.schemas import InputModel, nested_input_keys
from app.main import create_app


class _Child(InputModel):
    name: str = ""
    tags: list[str] = Field(default_factory=list)


class _Parent(InputModel):
    title: str = ""
    count: int = 0
    details: dict[str, Any] = Field(default_factory=dict)
    child: _Child | None = None
    children: list[_Child] = Field(default_factory=list)


def _subclasses(cls: type[InputModel]) -> list[type[InputModel]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def test_every_input_model_knows_its_nested_fields() -> None:
    create_app()  # imports every feature's schemas
    models = _subclasses(InputModel)
    assert len(models) > 20
    for model in models:  # (now that every annotation resolves)
        assert model._nested_input_keys == nested_input_keys(model), model
    assert _Parent._nested_input_keys == {"child", "children"}


@pytest.mark.parametrize(
    "body",
    [
        {"title": "a\x00b"},
        {"details": {"note\x00": "x"}},
        {"details": {"deep": [{"x": "\x00"}]}},
        {"child": {"name": "\x00"}},
        {"children": [{"name": "ok"}, {"tags": ["fine", "\x00"]}]},
        {"child\x00": {}},
        # A string where a nested model belongs: refused for its NUL as for its type.
        {"child": "\x00"},
    ],
)
def test_a_nul_anywhere_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="NUL"):
        _Parent.model_validate(body)


def test_text_without_nul_numbers_and_nulls_pass() -> None:
    parent = _Parent.model_validate(
        {
            "title": "tea \\u0000 is text, not a NUL",
            "count": 3,
            "details": {"n": 1.5, "ok": True, "none": None, "list": ["a", {"b": "c"}]},
            "child": None,
            "children": [{"name": "x", "tags": ["y"]}],
        }
    )
    assert parent.children[0].tags == ["y"]
