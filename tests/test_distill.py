"""dyncli distill: teacher choice and refusal, the methods' objectives and paths, the record."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from dyncli.checkpoint import Checkpoint, file_sha256, load_checkpoint, save_checkpoint
from dyncli.data.dataset import pad_waves
from dyncli.training.module import Teacher, TrainingModule
from dyncli.training.objectives import (
    Batch,
    ExitKD,
    FinalCTC,
    FullDepth,
    LayerDrop,
    PosteriorKD,
    Step,
    StudentPass,
    ctc_loss,
)
from tests.conftest import WORDS, invoke_cli, write_wav


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distill")
    rows = []
    for i in range(4):
        write_wav(root / f"u{i}.wav", seconds=0.5 + 0.1 * i, freq=300 + 80 * i)
        rows.append({"audio_filepath": f"u{i}.wav", "text": " ".join(WORDS[: 1 + i % 3])})
    manifest = root / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    return manifest


@pytest.fixture(scope="module")
def dynamic(tiny_ckpt: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dyn") / "dynamic.ckpt"
    result = invoke_cli(
        "convert", tiny_ckpt, "-o", out, "--exits", "1,2", "--train", data, "--dev", data,
        "--max-steps", "1", "--epochs", "1", "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def _distill(dynamic: Path, data: Path, out: Path, *extra: object):
    return invoke_cli(
        "distill", dynamic, "-o", out, "--train", data, "--dev", data, "--max-steps", "2",
        "--epochs", "1", "--threads", "1", *extra,
    )  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [
        ("--method", "factorized-kd"),
        ("--method", "factorized-kd", "--factorized-head"),
        ("--method", "dld", "--drop-rate", "0.5"),
        ("--method", "exit-kd", "--kd-kl"),
    ],
)
def test_distill_records_method_teacher_and_options(dynamic, data, tmp_path, extra) -> None:
    out = tmp_path / "kd.ckpt"
    result = _distill(dynamic, data, out, *extra)
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    assert ckpt.method is not None
    record = ckpt.method["distillation"]
    assert record["method"] == extra[1]
    # The default teacher is the static model the input was converted from (sha256 checked).
    source = load_checkpoint(dynamic).provenance["converted_from"]
    assert record["teacher"] == {
        "kind": "checkpoint",
        "path": source,
        "sha256": file_sha256(source),
    }
    assert record["source"]["sha256"] == file_sha256(dynamic)
    assert record["options"]["temperature"] == 1.0
    assert ckpt.method["exits"] == [1, 2] and ckpt.method["operating_point"] is None
    if "--factorized-head" in extra:
        assert ckpt.method["exit_head"] == "factorized"
        assert ckpt.model.exit_head_form == "factorized"
    assert not (tmp_path / "kd.ckpt.run").exists()
    shown = invoke_cli("inspect", out, "--json", "-")
    assert json.loads(shown.output)["distillation"]["method"] == extra[1]
    table = invoke_cli("inspect", out, env={"COLUMNS": "300"}).output
    assert f"distilled: {extra[1]} (teacher: {source})" in table


def _retokenized(ckpt: Checkpoint, path: Path) -> Path:
    from dyncli.data.text import CharTokenizer

    other = CharTokenizer.train(["abc def"])
    ckpt = dataclasses.replace(ckpt, tokenizer=other)
    save_checkpoint(path, ckpt)
    return path


def test_teacher_with_another_tokenizer_or_frame_rate_is_refused(
    tiny_ckpt, dynamic, data, tmp_path
) -> None:
    static = load_checkpoint(tiny_ckpt)
    bad_tok = _retokenized(static, tmp_path / "tok.ckpt")
    result = _distill(dynamic, data, tmp_path / "o.ckpt", "--teacher", bad_tok)
    assert result.exit_code == 2
    assert "tokenizer differs" in result.stderr and "Traceback" not in result.output

    from dyncli.models.conformer import build_conformer_ctc

    config = static.config
    slow = dataclasses.replace(
        config,
        frontend=dataclasses.replace(config.frontend, hop_length=2 * config.frontend.hop_length),
    )
    model = build_conformer_ctc(slow, static.model.head.out_features)
    save_checkpoint(
        tmp_path / "rate.ckpt",
        Checkpoint(model=model, tokenizer=static.tokenizer, backbone="conformer", config=slow),
    )
    result = _distill(dynamic, data, tmp_path / "o.ckpt", "--teacher", tmp_path / "rate.ckpt")
    assert result.exit_code == 2 and "frame rate differs" in result.stderr
    assert not (tmp_path / "o.ckpt").exists()


def test_default_teacher_falls_back_to_the_models_own_full_depth(dynamic, tmp_path) -> None:
    from dyncli.recipes.distill import choose_teacher

    ckpt = load_checkpoint(dynamic)
    ckpt.provenance["converted_from_sha256"] = "0" * 64  # the source changed since
    choice = choose_teacher(ckpt, None)
    assert choice.record["kind"] == "self"
    assert choice.model is not ckpt.model and not choice.model.exits
    x = torch.randn(1, 8000)
    torch.testing.assert_close(
        choice.model(x, torch.tensor([8000]))[0], ckpt.model(x, torch.tensor([8000]))[0]
    )


def test_distill_refuses_a_model_without_exits_for_exit_methods(tiny_ckpt, data, tmp_path) -> None:
    result = _distill(tiny_ckpt, data, tmp_path / "o.ckpt", "--method", "exit-kd")
    assert result.exit_code == 2 and "intermediate heads" in result.stderr
    bad = _distill(tiny_ckpt, data, tmp_path / "o.ckpt", "--method", "dld", "--kd-kl")
    assert bad.exit_code == 2 and "--kd-kl" in bad.stderr


@pytest.mark.parametrize("method", ["factorized-kd", "exit-kd"])
def test_freeze_backbone_trains_the_exit_heads_only(dynamic, data, tmp_path, method) -> None:
    """Every backbone tensor (final head and normalization statistics included) is the input's,
    bit for bit, so full depth is unchanged; the exit heads learned; the option is recorded."""
    out = tmp_path / "frozen.ckpt"
    result = _distill(dynamic, data, out, "--method", method, "--freeze-backbone", "--lr", "0.01")
    assert result.exit_code == 0, result.output
    before, after = load_checkpoint(dynamic).model.state_dict(), load_checkpoint(out).model
    state = after.state_dict()
    for key, value in before.items():
        if not key.startswith("exit_heads."):
            assert torch.equal(value, state[key]), key
    assert not torch.equal(before["exit_heads.1.weight"], state["exit_heads.1.weight"])
    record = load_checkpoint(out).method
    assert record is not None and record["distillation"]["options"]["freeze_backbone"] is True


def test_freeze_backbone_is_refused_where_it_cannot_apply(dynamic, data, tmp_path) -> None:
    dld = _distill(dynamic, data, tmp_path / "o.ckpt", "--method", "dld", "--freeze-backbone")
    assert dld.exit_code == 2 and "--freeze-backbone" in dld.stderr
    assert "dld" in dld.stderr.splitlines()[-1]
    ckpt = load_checkpoint(dynamic)
    assert ckpt.method is not None
    ckpt.method["skip_aware_training"] = {
        "layer": 1, "thresholds": [0.5, 0.9], "neighbours": 1, "share_of_steps": 0.5,
    }  # fmt: skip
    skip_aware = tmp_path / "skip-aware.ckpt"
    save_checkpoint(skip_aware, ckpt)
    bad = _distill(skip_aware, data, tmp_path / "o.ckpt", "--freeze-backbone")
    assert bad.exit_code == 2 and "skip-aware" in bad.stderr
    assert not (tmp_path / "o.ckpt").exists()


def _batch(n: int = 2) -> Batch:
    gen = torch.Generator().manual_seed(0)
    waves = [torch.randn(4000 + 1600 * i, generator=gen) * 0.1 for i in range(n)]
    wave, lens = pad_waves(waves)
    return Batch(ids=list(range(n)), wave=wave, lengths=lens, targets=[[3, 4], [5]][:n])


def test_dld_with_drop_rate_zero_is_plain_kd(tiny_ckpt) -> None:
    model = load_checkpoint(tiny_ckpt).model
    teacher = Teacher(load_checkpoint(tiny_ckpt).model)
    objectives = [(FinalCTC(), 1.0), (PosteriorKD(), 1.0)]
    batch = _batch()
    plain = TrainingModule(model, objectives, path=FullDepth(), teacher=teacher).train(False)
    dld = TrainingModule(
        model, objectives, path=LayerDrop(0.0, torch.Generator()), teacher=teacher
    ).train(False)
    (a, ta), (b, tb) = plain(batch), dld(batch)
    torch.testing.assert_close(a, b)
    assert ta.keys() == tb.keys() == {"ctc", "kd"}
    assert float(ta["kd"]) == pytest.approx(0.0, abs=1e-6)  # student == teacher


def test_a_dropped_layer_is_not_computed(tiny_ckpt) -> None:
    model = load_checkpoint(tiny_ckpt).model
    ran: list[int] = []
    run_layer = model.run_layer

    def spy(index: int, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        ran.append(index)
        return run_layer(index, x, pad_mask)

    model.run_layer = spy  # type: ignore[method-assign]
    path = LayerDrop(0.5, torch.Generator().manual_seed(3))
    kept = LayerDrop(0.5, torch.Generator().manual_seed(3)).sample(model.num_layers)
    assert len(kept) < model.num_layers  # this seed drops something
    x = torch.randn(2, 7, model.head.in_features)
    out = path.run(model, x, torch.tensor([7, 5]), frozen=False)
    assert ran == kept
    assert out.final is not None and out.final.shape == (2, 7, model.head.out_features)


def test_exit_kd_pseudo_labels_come_from_the_teachers_greedy_path() -> None:
    v, t = 6, 8
    path = [0, 3, 3, 0, 4, 0, 2, 2]  # greedy: 3 4 2
    teacher = torch.full((1, t, v), -9.0)
    teacher[0, torch.arange(t), torch.tensor(path)] = 0.0
    teacher = torch.log_softmax(teacher, dim=-1)
    exit_lp = torch.log_softmax(torch.randn(1, t, v), dim=-1)
    lengths = torch.tensor([t])
    batch = Batch(ids=[0], wave=torch.zeros(1, 1), lengths=lengths, targets=[[1, 1]])
    step = Step(batch, StudentPass({2: exit_lp}, None, lengths), lambda: teacher)
    terms = ExitKD()(step)
    torch.testing.assert_close(terms["exit_kd"], ctc_loss(exit_lp, lengths, [[3, 4, 2]]))
    assert not torch.allclose(terms["exit_kd"], ctc_loss(exit_lp, lengths, [[1, 1]]))


def test_factorized_head_is_a_distribution_and_survives_a_round_trip(dynamic, tmp_path) -> None:
    from dyncli.models.base import factorized_log_probs

    logits = torch.randn(2, 5, 7)
    lp = factorized_log_probs(logits)
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(2, 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(lp[..., 0], torch.nn.functional.logsigmoid(logits[..., 0]))
    ckpt = load_checkpoint(dynamic)
    ckpt.model.exit_head_form = "factorized"
    assert ckpt.method is not None
    ckpt.method["exit_head"] = "factorized"
    save_checkpoint(tmp_path / "f.ckpt", ckpt)
    assert load_checkpoint(tmp_path / "f.ckpt").model.exit_head_form == "factorized"


def test_an_older_v1_checkpoint_still_loads_and_distills(dynamic, data, tmp_path) -> None:
    """A format-1 file written before distill existed (no source sha256, no head form, no
    default policy) loads as before and distils with its own full depth as teacher."""
    payload = torch.load(dynamic, map_location="cpu", weights_only=True)
    assert payload["format_version"] == 2 and payload["method"]["operating_point"] is None
    payload["format_version"] = 1  # as format 1 wrote it (its operating point, None, is the same)
    payload["provenance"].pop("converted_from_sha256", None)
    for key in ("exit_head", "default_policy"):
        payload["method"].pop(key, None)
    old = tmp_path / "old.ckpt"
    torch.save(payload, old)
    ckpt = load_checkpoint(old)
    assert ckpt.model.exit_head_form == "softmax" and ckpt.model.exits == [1, 2]
    result = _distill(old, data, tmp_path / "o.ckpt")
    assert result.exit_code == 0, result.output
    teacher = load_checkpoint(tmp_path / "o.ckpt").method["distillation"]["teacher"]  # type: ignore[index]
    assert teacher["kind"] == "self" and teacher["sha256"] == file_sha256(old)
