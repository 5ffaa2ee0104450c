"""Typed method records and the one checkpoint migration (issue 19 item 2).

The files under tests/data/formats/ are the metadata (weights removed) of
``dyncli/assets/demo_dynamic.ckpt`` as the project shipped it: at commit 9582717 (format 1,
before blank ids were stored, a flat blank-skip point) and at 1bf7882 (format 1 with a blank
id, a flat early-exit-posterior point). The bundled checkpoint itself is still a format-1 file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from dyncli.checkpoint import FORMAT_VERSION, load_checkpoint, migrate, save_checkpoint
from dyncli.dynamic.operating_point import stored_point
from dyncli.dynamic.records import MethodRecord, OperatingPoint, point_from_flat

FORMATS = Path(__file__).parent / "data" / "formats"
BUNDLED = Path(__file__).resolve().parents[1] / "dyncli" / "assets" / "demo_dynamic.ckpt"


def shipped(name: str) -> dict:
    return torch.load(FORMATS / f"{name}.pt", weights_only=True)


def test_format1_without_blank_id_migrates() -> None:
    payload = shipped("format1_without_blank_id")
    assert payload["format_version"] == 1 and "blank_id" not in payload
    flat = dict(payload["method"]["operating_point"])
    migrate(Path("old.ckpt"), payload)
    assert payload["blank_id"] == 0
    record = MethodRecord.from_payload(payload["method"])
    assert record.name == "early-exit" and record.exits == payload["method"]["exits"]
    point = record.operating_point
    assert isinstance(point, OperatingPoint)
    assert point.policy == "blank-skip" and point.threshold == 0.5
    assert point.settings == {"layer": 4, "neighbours": 1}
    assert point.chosen["dev_wer"] == 0.025 and "layer" not in point.chosen
    assert point.flat() == flat  # nothing lost, nothing added
    assert stored_point(record) == ("blank-skip", 0.5, {"layer": 4, "neighbours": 1})


def test_format1_with_blank_id_migrates() -> None:
    payload = shipped("format1")
    flat = dict(payload["method"]["operating_point"])
    blank = payload["blank_id"]
    migrate(Path("old.ckpt"), payload)
    assert payload["blank_id"] == blank
    record = MethodRecord.from_payload(payload["method"])
    point = record.operating_point
    assert point is not None and point.policy == "early-exit-posterior"
    assert point.settings == {"criterion": "posterior"}
    assert point.flat() == flat
    assert record["freeze_backbone"] is True and record.extra["freeze_backbone"] is True


def test_migration_is_idempotent_and_leaves_format2_alone() -> None:
    payload = shipped("format1")
    migrate(Path("old.ckpt"), payload)
    once = copy.deepcopy(payload["method"])
    payload["format_version"] = FORMAT_VERSION
    migrate(Path("new.ckpt"), payload)
    assert payload["method"] == once


def test_bundled_format1_file_loads_typed_and_saves_as_format2(tmp_path: Path) -> None:
    ckpt = load_checkpoint(BUNDLED)
    assert ckpt.format_version == 1  # as stored
    assert isinstance(ckpt.method, MethodRecord)
    point = ckpt.method.operating_point
    assert point is not None and point.policy == "early-exit-posterior"
    out = tmp_path / "again.ckpt"
    save_checkpoint(out, ckpt)
    raw = torch.load(out, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION == 2
    stored = raw["method"]["operating_point"]
    assert set(stored) == {"policy", "threshold", "settings", "chosen"}
    again = load_checkpoint(out)
    assert again.method == ckpt.method


def test_record_reads_and_writes_like_the_dict_it_replaces() -> None:
    record = MethodRecord.from_payload({"name": "layerdrop", "exits": [2], "drop_rate": 0.3})
    assert record["name"] == "layerdrop" and record.get("drop_rate") == 0.3
    assert record.get("distillation") is None and record["operating_point"] is None
    record["operating_point"] = {"policy": "drop", "threshold": 6, "dev_wer": 0.1}
    assert isinstance(record.operating_point, OperatingPoint)
    assert record["operating_point"]["dev_wer"] == 0.1
    assert record.operating_point.settings == {} and record.operating_point.threshold == 6
    assert dict(record)["drop_rate"] == 0.3
    json.dumps(record.json())  # plain types only


def test_point_split_by_the_policys_fields() -> None:
    flat = {"policy": "blank-skip", "threshold": 0.9, "layer": 3, "bucket": 0, "dev_wer": 0.02}
    point = point_from_flat(flat)
    assert point.settings == {"layer": 3, "bucket": 0} and point.chosen == {"dev_wer": 0.02}
    unknown = point_from_flat({"policy": "not-installed", "threshold": 1, "layer": 3})
    assert unknown.settings == {} and unknown.chosen == {"layer": 3}


def test_inspect_shows_the_record() -> None:
    from typer.testing import CliRunner

    from dyncli.cli.app import build_app

    result = CliRunner().invoke(build_app(), ["inspect", str(BUNDLED), "--json", "-"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["record"]["name"] == "early-exit"
    assert info["record"]["operating_point"]["policy"] == "early-exit-posterior"
    assert info["record"]["freeze_backbone"] is True
    table = CliRunner().invoke(build_app(), ["inspect", str(BUNDLED)])
    assert "freeze_backbone=True" in " ".join(table.output.split())


@pytest.mark.parametrize("bad", [{"settings": [1]}, {"chosen": "x"}])
def test_damaged_nested_point_is_refused(tmp_path: Path, bad: dict) -> None:
    from dyncli.errors import CheckpointError

    ckpt = load_checkpoint(BUNDLED)
    out = tmp_path / "x.ckpt"
    save_checkpoint(out, ckpt)
    raw = torch.load(out, weights_only=True)
    raw["method"]["operating_point"].update(bad)
    torch.save(raw, out)
    with pytest.raises(CheckpointError, match="operating_point"):
        load_checkpoint(out)
