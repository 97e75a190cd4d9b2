"""The rules in docs/architecture.md, checked so that a reviewer need not repeat them."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"

# A package may import itself and the packages before it; nothing runs back up the list.
LAYERS = [
    "core",
    "models",
    "access",
    "ledger",
    "network",
    "reconciliation",
    "identity",
    "exchanges",
    "reports",
]
FEATURES = set(LAYERS) - {"core", "models", "access"}


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(APP.rglob("*.py")):
        relative = path.relative_to(APP)
        yield str(relative), ast.parse(path.read_text(), filename=str(path))


def _imported(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            if node.module == "app":  # from app import ledger
                for alias in node.names:
                    yield node.lineno, f"app.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


def test_imports_point_one_way_down_the_layers() -> None:
    wrong = []
    for name, tree in _modules():
        package = name.split("/")[0]
        if package not in LAYERS:
            continue  # main.py, cli.py, cli_tasks.py wire everything together
        allowed = set(LAYERS[: LAYERS.index(package) + 1])
        for line, module in _imported(tree):
            parts = module.split(".")
            if parts[0] == "app" and len(parts) > 1 and parts[1] in set(LAYERS) - allowed:
                wrong.append(f"app/{name}:{line} imports {module}")
    assert not wrong, "imports that run back up the layers:\n" + "\n".join(wrong)


def test_no_feature_imports_another_features_router_or_dependencies() -> None:
    wrong = []
    for name, tree in _modules():
        package = name.split("/")[0]
        for line, module in _imported(tree):
            parts = module.split(".")
            if (
                len(parts) >= 3
                and parts[0] == "app"
                and parts[1] in FEATURES
                and parts[1] != package
                and parts[2] in {"router", "dependencies"}
                and name != "main.py"
            ):
                wrong.append(f"app/{name}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_only_the_ledger_writes_entries_and_transactions() -> None:
    wrong = []
    for name, tree in _modules():
        if name.startswith(("ledger/", "models/")):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                targets = [called] + [a.id for a in node.args if isinstance(a, ast.Name)]
                if called in {"Entry", "Transaction"} or (
                    called in {"insert", "update", "delete"}
                    and {"Entry", "Transaction"} & set(targets)
                ):
                    wrong.append(f"app/{name}:{node.lineno}")
    assert not wrong, "ask app.ledger's posting engine instead:\n" + "\n".join(wrong)


def test_only_the_request_unit_of_work_commits_a_session() -> None:
    """Services flush; ``get_session`` commits. (Work on a connection of its own, such as a
    reconciliation ending its read snapshots, is not the request's unit of work.)"""
    wrong = []
    for name, tree in _modules():
        if name == "core/database.py":
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "commit"
                and "session" in ast.unparse(node.func.value).lower()
            ):
                wrong.append(f"app/{name}:{node.lineno}")
    assert not wrong, "services flush; get_session commits:\n" + "\n".join(wrong)
