"""Export to safetensors: weights and JSON metadata only, and the same predictions as the .ckpt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors import safe_open
from safetensors.torch import save_file

from stroke_seg.cli import export_main
from stroke_seg.errors import StrokeSegError
from stroke_seg.export import export_safetensors
from stroke_seg.inference import load_model
from stroke_seg.predict import run as predict
from tests.helpers import (
    CONF_DIR,
    REPO,
    save_module_checkpoint,
    tiny_preprocessing,
    tiny_scan,
    write_nifti,
)

# a zoom-in model: predictions use sliding windows
PRE = tiny_preprocessing(crop_size=[16, 16, 16], grid_shape=[24, 28, 20])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """What Lightning writes for a LesionSegModule (state_dict, hyper-parameters, more)."""
    return save_module_checkpoint(
        tmp_path_factory.mktemp("export") / "last.ckpt",
        PRE,
        seed=1,
        epoch=3,
        optimizer_states=[{"state": {}, "param_groups": []}],
    )


def _predict(model: Path, scan: Path, out: Path) -> None:
    overrides = [f"ckpt={model}", f"input={scan}", f"output={out}", "qc=false"]
    overrides.append("inference.device=cpu")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        predict(compose(config_name="predict", overrides=overrides))


def test_safetensors_holds_the_weights_and_the_model_description(ckpt, tmp_path):
    out = export_safetensors(ckpt, tmp_path / "model.safetensors")
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        names = set(f.keys())
    hparams = json.loads(meta["hyper_parameters"])
    assert meta["format"] == "stroke_seg/1" and meta["exported_from"] == str(ckpt)
    assert hparams["net"] == {"widths": [4, 8], "groups": 2, "checkpointing": False}
    assert hparams["preprocessing"] == PRE and hparams["threshold"] == 0.5
    original = torch.load(ckpt, weights_only=True)["state_dict"]
    assert names == {k for k in original if k.startswith("net.")}  # no optimiser, no loss
    a, b = load_model(ckpt), load_model(out)
    assert a.preprocessing == b.preprocessing and a.threshold == b.threshold
    for key, value in a.net.state_dict().items():
        assert torch.equal(b.net.state_dict()[key], value)


def test_predictions_from_ckpt_and_safetensors_are_identical(ckpt, tmp_path):
    model = export_safetensors(ckpt, tmp_path / "model.safetensors")
    scan = write_nifti(tmp_path / "in" / "s_T1w.nii.gz", tiny_scan(np.random.default_rng(2))[0])
    _predict(ckpt, scan, tmp_path / "from_ckpt")
    _predict(model, scan, tmp_path / "from_safetensors")
    for name in ("s_T1w_lesion_prob.nii.gz", "s_T1w_lesion_mask.nii.gz", "lesions.csv"):
        a = (tmp_path / "from_ckpt" / name).read_bytes()
        assert a == (tmp_path / "from_safetensors" / name).read_bytes(), name


def test_the_cli_writes_once_and_replaces_only_with_overwrite(ckpt, tmp_path, capsys):
    """A Hydra command like train.py (conf/export.yaml): key=value options, our mistakes as
    one sentence with exit status 2, Hydra's own refusal of an unknown key."""
    out = tmp_path / "m.safetensors"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "stroke_seg.export", f"ckpt={ckpt}", f"out={out}"]
    result = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"wrote {out}" and out.is_file()
    for argv, message in [
        ([f"ckpt={ckpt}", f"out={out}"], f"error: out={out} already exists; pass overwrite=true"),
        ([f"ckpt={ckpt}"], "error: out= is missing; usage: stroke-seg-export ckpt=PATH.ckpt"),
        ([f"ckpt={ckpt}", f"out={tmp_path / 'm.pt'}"], "must end in .safetensors"),
        (
            [f"ckpt={tmp_path / 'absent.ckpt'}", f"out={tmp_path / 'n.safetensors'}"],
            "absent.ckpt does not exist",
        ),
    ]:
        with pytest.raises(SystemExit) as info:
            export_main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as info:  # Hydra: an unknown key, with its hint
        export_main([f"ckpt={ckpt}", f"out={out}", "fast=yes"])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Could not override 'fast'" in err and "+fast=yes" in err
    before = out.stat().st_mtime_ns
    export_main([f"ckpt={ckpt}", f"out={out}", "overwrite=true"])
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert out.stat().st_mtime_ns > before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_foreign_or_broken_safetensors_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(np.random.default_rng(0).bytes(200))
    with pytest.raises(StrokeSegError, match=r"junk\.safetensors is not a readable safetensors"):
        load_model(junk)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(StrokeSegError, match=r"other\.safetensors was not exported by stroke_seg"):
        load_model(other)
    with pytest.raises(StrokeSegError, match=r"absent\.safetensors does not exist"):
        load_model(tmp_path / "absent.safetensors")


def test_the_template_and_intensity_reference_travel_with_the_export(tmp_path):
    """A model for native-space scans keeps what prediction registers and standardises to."""
    from tests.helpers import native_checkpoint

    ckpt = native_checkpoint(tmp_path / "native.ckpt", n_reference=1)
    a, b = load_model(ckpt), load_model(export_safetensors(ckpt, tmp_path / "native.safetensors"))
    assert b.preprocessing.template == "MNI152NLin2009aSym"
    assert b.preprocessing.intensity_reference == a.preprocessing.intensity_reference
    assert b.preprocessing.intensity_reference["n_scans"] == 1
    assert a.preprocessing == b.preprocessing
