from __future__ import annotations

import re

from app.cli import OPENAPI_PATH, render_openapi
from app.main import create_app

DESIGN_PATH_PARAMETERS = {
    "community_id",
    "member_id",
    "account_id",
    "transaction_id",
    "listing_id",
    "exchange_id",
    "reconciliation_id",
    "client_id",
}


def test_committed_openapi_matches_the_app() -> None:
    assert OPENAPI_PATH.read_text() == render_openapi(), "run `make openapi` and commit the result"


def test_every_operation_has_a_stable_id_a_tag_and_problem_responses() -> None:
    spec = create_app().openapi()
    seen = set()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation.get("operationId"), f"{method} {path} has no operationId"
            assert operation["operationId"] not in seen
            seen.add(operation["operationId"])
            assert operation.get("tags"), f"{method} {path} has no tag"
            if path.startswith("/v1/"):
                assert "422" in operation["responses"], f"{method} {path} declares no 422"
                problem = operation["responses"]["422"]["content"]["application/problem+json"]
                assert problem["schema"]["$ref"] == "#/components/schemas/Problem"


def test_path_parameters_use_the_names_partners_rely_on() -> None:
    spec = create_app().openapi()
    for path in spec["paths"]:
        for name in re.findall(r"{([^}]+)}", path):
            assert name in DESIGN_PATH_PARAMETERS, f"{path} uses {{{name}}}"
