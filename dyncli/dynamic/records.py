"""What a dynamic checkpoint records about its method: :class:`MethodRecord` and the
:class:`OperatingPoint` it recommends (typed; stored in the checkpoint as plain types).

Both read like the dicts they replace (``record["exits"]``, ``point["threshold"]``,
``record.get("distillation")``) for one release, so code and scripts written against the dicts
keep working; new code reads the attributes. A record is written by the method that trained the
model (its ``MethodSpec.train``), and every field the record does not name is kept in
``extra`` (a method's own settings, e.g. ``drop_rate``, or its part under its name, e.g.
``gates``).

On disk (checkpoint format 2) the operating point is nested::

    {"policy": NAME, "threshold": 0.9,
     "settings": {"layer": 3, "neighbours": 1},         # the policy's config besides threshold
     "chosen": {"dev_wer": 0.02, "rule": "...", ...}}   # how it was chosen

Format 1 stored it flat; :func:`point_from_flat` splits such a point with the policy's config
fields (``dyncli.checkpoint.migrate`` calls it on load).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

POINT_KEYS = ("policy", "threshold", "settings", "chosen")


@dataclass
class OperatingPoint(Mapping[str, Any]):
    """A stored operating point: run ``policy`` at ``threshold`` with ``settings`` (its config
    fields besides the threshold); ``chosen`` holds how it was chosen (dev WER and the
    interval of its difference to full depth, the rule, the budget, the dev set's size, any
    warning). As a mapping it reads flat, as format 1 stored it: ``point["layer"]``,
    ``point["dev_wer"]``."""

    policy: str
    threshold: float
    settings: dict[str, Any] = field(default_factory=dict)
    chosen: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "threshold": self.threshold,
            **self.settings,
            **self.chosen,
        }

    def __getitem__(self, key: str) -> Any:
        return self.flat()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.flat())

    def __len__(self) -> int:
        return len(self.flat())

    def to_payload(self) -> dict[str, Any]:
        """The plain-type form stored in a checkpoint (format 2)."""
        return {
            "policy": self.policy,
            "threshold": self.threshold,
            "settings": dict(self.settings),
            "chosen": dict(self.chosen),
        }

    @classmethod
    def from_payload(cls, value: Mapping[str, Any]) -> OperatingPoint:
        """A point as stored in format 2 (nested) or already flat from dyncli's own code."""
        if isinstance(value, OperatingPoint):
            return value
        if "settings" in value or "chosen" in value:
            return cls(
                str(value["policy"]),
                value["threshold"],
                dict(value.get("settings") or {}),
                dict(value.get("chosen") or {}),
            )
        return point_from_flat(value)


def point_from_flat(
    value: Mapping[str, Any], fields: tuple[str, ...] | None = None
) -> OperatingPoint:
    """A flat point (format 1, or a dict built by a caller) split into settings and evidence:
    ``fields`` are the policy's config fields (default: from the registered policy; none when
    it is not installed, so everything but policy and threshold counts as evidence)."""
    policy = str(value["policy"])
    if fields is None:
        fields = policy_fields(policy)
    rest = {k: v for k, v in value.items() if k not in ("policy", "threshold")}
    settings = {k: v for k, v in rest.items() if k in fields}
    chosen = {k: v for k, v in rest.items() if k not in fields}
    return OperatingPoint(policy, value["threshold"], settings, chosen)


def policy_fields(policy: str) -> tuple[str, ...]:
    """The config fields of registered skip policy ``policy`` besides its threshold."""
    from dyncli.registry.manager import skip_policies

    spec = skip_policies().get(policy)
    if spec is None:
        return ()
    return tuple(f.name for f in dataclasses.fields(spec.config_cls) if f.name != "threshold")


# The record's named fields, in the order they are stored; any other key goes to ``extra``.
RECORD_FIELDS = (
    "name",
    "exits",
    "training",
    "default_policy",
    "exit_head",
    "skip_aware_training",
    "distillation",
    "source",
    "operating_point",
)


@dataclass
class MethodRecord(MutableMapping[str, Any]):
    """How a dynamic model was made and how it runs by default.

    ``name``: the method that trained it (a registered ``MethodSpec``, or ``static`` for a
    model distilled without exits); ``exits``: the layers (1-based) with a CTC head;
    ``training``: ``fine-tune`` or ``from-scratch``; ``default_policy``: the policy to run when
    no point is stored (None: the default for models with exits); ``exit_head``: ``factorized``
    when the exit heads read their blank logit on its own; ``skip_aware_training``: the
    blank-skip-in-the-loop settings it was trained with; ``distillation``: the teacher and
    options of its last ``distill``; ``source``: the static model it was converted from;
    ``operating_point``: what ``--wer-budget`` chose on dev; ``extra``: everything else.
    """

    name: str = "static"
    exits: list[int] = field(default_factory=list)
    training: str | None = None
    default_policy: str | None = None
    exit_head: str | None = None
    skip_aware_training: dict[str, Any] | None = None
    distillation: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    operating_point: OperatingPoint | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_payload(cls, value: Mapping[str, Any]) -> MethodRecord:
        if isinstance(value, MethodRecord):
            return value
        record = cls()
        for key, item in value.items():
            record[key] = item
        return record

    def to_payload(self) -> dict[str, Any]:
        """The plain-type form stored in a checkpoint (format 2): named fields that are set,
        ``operating_point`` always (None when none is stored), then ``extra``."""
        out: dict[str, Any] = {}
        for key in RECORD_FIELDS:
            value = getattr(self, key)
            if key == "operating_point":
                out[key] = None if value is None else value.to_payload()
            elif value is not None or key in ("name", "exits"):
                out[key] = list(value) if key == "exits" else value
        out.update(self.extra)
        return out

    # --- the mapping view (the dict this record replaces) --------------------------------

    def __getitem__(self, key: str) -> Any:
        if key in RECORD_FIELDS:
            return getattr(self, key)
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "operating_point":
            self.operating_point = None if not value else OperatingPoint.from_payload(value)
        elif key == "exits":
            self.exits = [int(k) for k in value or []]
        elif key in RECORD_FIELDS:
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key in RECORD_FIELDS:
            setattr(self, key, [] if key == "exits" else None)
        else:
            del self.extra[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_payload())

    def __len__(self) -> int:
        return len(self.to_payload())

    def json(self) -> dict[str, Any]:
        """The record as ``inspect --json`` shows it (the point flat, as the table does)."""
        out = self.to_payload()
        if self.operating_point is not None:
            out["operating_point"] = self.operating_point.flat()
        return out
