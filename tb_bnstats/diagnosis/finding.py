"""A finding: one diagnosed problem of one run, as the CLI prints it, the
callback stores it and the tab shows it."""

import dataclasses
from collections.abc import Mapping
from typing import Any

from tb_bnstats.format.metadata import from_known_fields


@dataclasses.dataclass
class Finding:
    """One diagnosed problem of one run.

    ``code`` is a key of :data:`tb_bnstats.diagnosis.codes.CODES`,
    ``severity`` one of ``SEVERITIES``, ``scenario`` the code's scenario;
    ``layers`` the layers concerned in depth order; ``evidence`` maps each
    layer to its numbers (``{"bn_3": {"convergence": 0.63, ...}}``);
    ``message`` says it in plain words, with the fix, about the first layer
    (naming the others); ``messages`` says it about each layer with its own
    numbers (empty in findings stored by an older version).
    """

    code: str
    severity: str
    scenario: str
    run: str
    layers: list[str]
    evidence: dict[str, dict[str, float]]
    message: str
    messages: dict[str, str] = dataclasses.field(default_factory=dict)

    def message_of(self, layer: str) -> str:
        """What the finding says about ``layer``: its own message, else the
        finding's."""
        return self.messages.get(layer, self.message)

    def to_dict(self) -> dict[str, Any]:
        """The finding as a JSON-able dict (the stored form)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Finding":
        """A finding from its stored form; keys a newer writer added are ignored.

        Raises:
            TypeError: ``d`` lacks a field.
        """
        return from_known_fields(cls, d)

    def __str__(self) -> str:
        return f"{self.severity.upper():7s} {self.code} [{self.scenario}] {self.run}: {self.message}"
