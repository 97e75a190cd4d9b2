"""What a reconciliation check reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MAX_FINDINGS_PER_CHECK = 200  # a report names rows; it need not name a million of them


@dataclass
class Finding:
    message: str
    rows: dict[str, Any]
    expected: Any = None
    found: Any = None


@dataclass
class CheckResult:
    name: str
    description: str
    findings: list[Finding] = field(default_factory=list)
    total: int = 0  # findings found, including those beyond the report's cap

    def add(self, finding: Finding) -> None:
        self.total += 1
        if len(self.findings) < MAX_FINDINGS_PER_CHECK:
            self.findings.append(finding)

    @property
    def passed(self) -> bool:
        return self.total == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "status": "pass" if self.passed else "fail",
            "findings_total": self.total,
            "findings": [asdict(f) for f in self.findings],
        }
