"""make gpu-check: refuses without CUDA in one sentence; the CPU dry run writes the full schema."""

from __future__ import annotations

import json

import pytest
import torch

from stroke_seg.bench import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_refuses_without_cuda_in_one_sentence(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    with pytest.raises(SystemExit) as stop:
        gpu_check.main([f"out={out}"])
    assert stop.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: gpu-check needs a CUDA GPU")
    assert message.count("\n") == 0 and "dry_run=true" in message
    assert not out.exists()


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "results" / "gpu_check.json"
    result = gpu_check.run(out, dry_run=True, work=tmp_path)
    assert json.loads(out.read_text()) == result
    assert result["schema_version"] == gpu_check.SCHEMA_VERSION and result["dry_run"] is True
    assert {"device", "torch", "cuda", "bf16_supported", "sizes", "wall_s"} <= set(result)

    rows = result["train_steps"]
    sizes = gpu_check.TINY
    combos = {(tuple(r["crop"]), r["precision"], r["checkpointing"]) for r in rows}
    assert combos == {
        (c, p, k) for c in sizes.crops for p in ("fp32", "bf16") for k in (False, True)
    }
    for row in rows:
        assert set(row) == set(gpu_check.TRAIN_KEYS)
        assert row["error"] is None and row["step_s"] > 0
        assert row["max_memory_gib"] is None  # CUDA only

    recipe = result["recipe"]
    assert recipe["experiment"] == "paper" and recipe["stage"] == "zoom_in"
    assert (recipe["n_train"], recipe["n_val"]) == (2, 2)
    assert recipe["steps"] == recipe["n_train"] * sizes.recipe_epochs
    assert 0.0 <= recipe["val_dsc"] <= 1.0 and recipe["s_per_step"] > 0
    assert "checkpoint" not in recipe  # the run lived in a temporary folder

    inference = result["inference"]
    assert inference["shape"] == [50, 59, 48]  # 4 mm synthetic grid
    for mode in sizes.inference_modes:
        for name in ("fp32", "amp"):
            entry = inference[mode][name]
            assert entry["seconds"] > 0 and 0.0 <= entry["dsc"] <= 1.0
            assert entry["amp_active"] is False  # float16 autocast acts on CUDA only
        assert inference[mode]["max_abs_prob_difference"] == 0.0
    assert not list(tmp_path.glob("gpu_check_*"))  # work folder removed
