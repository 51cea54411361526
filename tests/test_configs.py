"""Every config option and every command in the docs composes and resolves.

A config file that no test composes can break silently (an interpolation to a key that only
some trainer files define, say), and a documented command that fails is worse than none.
These tests compose each option of each group (with the command whose config uses the
group), and each ``python train.py / evaluate.py / predict.py ...``, ``stroke-seg-<command>``
and ``python -m stroke_seg.<command>`` line of README.md, docs/ and the config comments, the
way Hydra would, and resolve every interpolation, the launcher and sweeper included.
"""

from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from tests.helpers import CONF_DIR, REPO

# The Hydra commands and their configs (stroke_seg.cli), in the order a config group is looked
# up: a group is composed with the first command whose config uses it.
CONFIGS = ("train", "evaluate", "predict", "crossval", "export")
# `python train.py ...`, `torchrun --nproc_per_node=4 train.py ...`, `stroke-seg-export ...`,
# `python -m stroke_seg.crossval ...`
COMMAND = (
    r"(?:(?:python|torchrun(?:\s+--\S+)*)\s+((?:train|evaluate|predict)\.py)"
    r"|\b(stroke-seg-(?:train|evaluate|predict|export|crossval))"
    r"|python\s+-m\s+(stroke_seg\.(?:export|crossval)))(?:\s|$)"
)


def config_of(command: str) -> str:
    """train.py, stroke-seg-train, stroke_seg.train -> train."""
    return re.sub(r"^(stroke-seg-|stroke_seg\.)|\.py$", "", command)


def compose_resolved(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose like the entry point would (sweeps reduced to their first value), then
    resolve the job config and the parts of the Hydra config that interpolate it."""
    parser = OverridesParser.create()
    single = []
    for override in parser.parse_overrides(overrides):
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            single.append(f"{override.get_key_element()}={first}")
        else:
            single.append(override.input_line)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=single, return_hydra_config=True)
    hydra_cfg = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
        if "paths" in cfg:  # set by Hydra when the job starts
            cfg.paths.output_dir = "/tmp/stroke_seg_compose_check"
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    with open_dict(hydra_cfg):
        hydra_cfg.sweep.subdir = "0"  # ${hydra.job.num}, set per job
    merged = OmegaConf.merge({"hydra": hydra_cfg}, cfg)
    for node in ("launcher", "sweeper", "run", "sweep"):
        OmegaConf.to_container(merged.hydra[node], resolve=True)
    return cfg


def _default_choices(config_name: str) -> dict[str, str | None]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, return_hydra_config=True)
    return dict(cfg.hydra.runtime.choices)


CHOICES = {name: _default_choices(name) for name in CONFIGS}
# Fixed values for keys that would differ between two compositions (run names from the time).
PINNED = {"train": ["name=check"], "evaluate": ["output=check"]}
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")


def config_for(group: str) -> str | None:
    """The first command whose config uses config group `group`."""
    return next((name for name in CONFIGS if group in CHOICES[name]), None)


def group_options() -> list[tuple[str, str]]:
    options = []
    for group in GROUPS:
        config = config_for(group) or "train"
        options += [
            (config, f"{group}={f.stem}") for f in sorted((CONF_DIR / group).glob("*.yaml"))
        ]
    launchers = sorted((CONF_DIR / "hydra/launcher").glob("*"))
    # Prediction shards run through the same launchers (predict.py has no trainer group).
    options += [(c, f"hydra/launcher={f.stem}") for f in launchers for c in ("train", "predict")]
    return options


def test_every_config_group_is_used_by_a_command():
    assert [g for g in GROUPS if config_for(g) is None] == []
    assert config_for("inference") == "evaluate" and config_for("model") == "train"


@pytest.mark.parametrize(("config", "option"), group_options())
def test_every_group_option_composes_and_resolves(config, option):
    if option.startswith(("hydra/launcher", "hparams_search")):
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    pinned = PINNED.get(config, [])
    cfg = compose_resolved(config, [option, *pinned])
    group, value = option.split("=")
    if group.startswith("hydra/") or group == "hparams_search":
        return  # these change only the Hydra config (launcher, sweeper), resolved above
    chosen = OmegaConf.to_container(cfg, resolve=True)
    default = OmegaConf.to_container(compose_resolved(config, pinned), resolve=True)
    if CHOICES[config].get(group) == value:
        assert chosen == default
    else:  # the option took effect
        assert chosen != default


def test_inference_options_come_from_one_group():
    """evaluate, predict and crossval compose conf/inference/default.yaml; evaluation and
    cross-validation score in fp32 (the paper's), prediction keeps float16 autocast."""
    from stroke_seg.inference import INFERENCE_OPTIONS

    group = OmegaConf.load(CONF_DIR / "inference" / "default.yaml")
    assert tuple(group) == INFERENCE_OPTIONS
    amp = {}
    for name in ("evaluate", "predict", "crossval"):
        assert CHOICES[name]["inference"] == "default"
        inference = compose_resolved(name, PINNED.get(name, [])).inference
        assert set(inference) == set(INFERENCE_OPTIONS)
        assert {k: inference[k] for k in ("mode", "tta", "overlap", "device")} == {
            "mode": "auto",
            "tta": False,
            "overlap": 0.5,
            "device": "auto",
        }
        amp[name] = inference.amp
    assert amp == {"evaluate": False, "predict": True, "crossval": False}
    for name in ("train", "export"):
        assert "inference" not in CHOICES[name]


def _is_override(token: str) -> bool:
    """key=value, not a placeholder such as [key=value ...] or (docs/x.md)."""
    placeholder = token.startswith(("[", "(", "-")) or "|" in token or "..." in token
    return "=" in token and not placeholder


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, overrides) for every command line in the docs and config comments."""
    sources = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    sources += sorted(CONF_DIR.rglob("*.yaml"))
    commands = []
    for path in sources:
        text = path.read_text()
        if path.suffix == ".md":
            blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
            lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
        else:
            lines = [ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")]
        for line in lines:
            found = re.search(COMMAND, line)
            if not found:
                continue
            start = next(found.start(i) for i in (1, 2, 3) if found.group(i))
            command = line[start:]
            try:
                tokens = shlex.split(command, comments=True)
            except ValueError:  # prose after the command ("the paper's ...")
                tokens = command.split()
            script = config_of(tokens[0])
            args = [t for t in tokens[1:] if _is_override(t)]
            commands.append((str(path.relative_to(REPO)), script, args))
    return commands


COMMANDS = documented_commands()


def test_the_docs_hold_commands_for_every_entry_point():
    configs = {config for _, config, _ in COMMANDS}
    assert configs == set(CONFIGS) and len(COMMANDS) > 25


@pytest.mark.parametrize(
    ("script", "overrides"),
    [(script, args) for _, script, args in COMMANDS],
    ids=[f"{where}: {script} {' '.join(args)}"[:100] for where, script, args in COMMANDS],
)
def test_documented_commands_compose(script, overrides):
    if any(o.startswith(("hydra/launcher", "hparams_search")) for o in overrides):
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    compose_resolved(script, overrides)


def test_slurm_launcher_shape_with_every_trainer():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    for trainer in ("default", "cpu", "gpu", "ddp"):
        cfg = compose_resolved("train", [f"trainer={trainer}", "hydra/launcher=slurm"])
        assert cfg.trainer.num_nodes == 1


# --------------------------------------------------------------------------------------
# experiment=paper is Tomita et al. (2020) Table 1 (docs/training.md), every option off
# --------------------------------------------------------------------------------------

PAPER_STAGES = {
    "zoom_in": {"crop_size": [128, 128, 128], "max_epochs": 1200, "lr": 1e-3, "snapshots": []},
    "zoom_out": {
        "crop_size": [144, 172, 168],
        "max_epochs": 150,
        "lr": 1e-4,
        "snapshots": [50, 100, 150],
    },
}


@pytest.mark.parametrize("stage", ["zoom_in", "zoom_out"])
def test_paper_preset_is_table_1_with_every_recipe_option_off(stage):
    import sys

    cfg = OmegaConf.to_container(
        compose_resolved("train", ["experiment=paper", f"stage={stage}", "name=paper"]),
        resolve=True,
    )
    want = PAPER_STAGES[stage]
    assert cfg["stage"]["crop_size"] == want["crop_size"] == cfg["data"]["crop_size"]
    assert cfg["stage"]["max_epochs"] == want["max_epochs"] == cfg["trainer"]["max_epochs"]
    assert cfg["stage"]["lr"] == want["lr"] == cfg["optim"]["lr"]
    assert cfg["stage"]["snapshot_epochs"] == want["snapshots"]
    assert cfg["callbacks"]["snapshot"]["epochs"] == want["snapshots"]
    # Table 1 is a number of epochs: no wall-clock budget
    assert (
        cfg["stage"]["time_budget_s"] is None and cfg["callbacks"]["time_budget"]["seconds"] is None
    )
    assert cfg["optim"] == {
        "lr": want["lr"],
        "weight_decay": 1e-4,
        "restart_period_epochs": 50,
        "eta_min": 0.0,
    }
    # network: 4 levels 32-256, GroupNorm(8), no deep supervision (18,524,609 parameters)
    assert cfg["model"] == {
        "widths": [32, 64, 128, 256],
        "groups": 8,
        "checkpointing": False,
        "deep_supervision": False,
    }
    # loss: 0.1 BCE + 0.9 Dice with the reference code's eps (machine epsilon)
    assert cfg["loss"] == {
        "bce_weight": 0.1,
        "dice_weight": 0.9,
        "smooth": sys.float_info.epsilon,
        "batch_dice": True,
    }
    data = cfg["data"]
    assert data["layout"] == "atlas_r12" and data["split_proportions"] == [182, 26, 31]
    assert data["eval_crop"] == [144, 172, 168] and data["batch_size"] == 1
    assert (data["sampling"], data["intensity_mode"], data["intensity_divisor"]) == (
        "uniform",
        "divide",
        255.0,
    )
    # no augmentation of any kind (appearance transforms included)
    probs = {k: v for k, v in data["augmentation"].items() if k.endswith("_prob")}
    assert len(probs) == 9 and set(probs.values()) == {0.0}
    assert cfg["trainer"]["precision"] == "32-true"
    assert cfg["speed"] == {"channels_last": False, "compile": False, "compile_mode": "default"}


def _leaves(node, prefix=""):
    """{dotted key: value} of every leaf of a plain config dict."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


@pytest.mark.parametrize("stage", ["zoom_in", "zoom_out"])
def test_recipe_is_the_paper_plus_exactly_its_listed_options(stage):
    """experiment=recipe keeps Table 1 (network, crops, epochs, schedule) and changes only
    the options its file lists; experiment=demo is built on it."""
    paper, recipe, demo = (
        _leaves(
            OmegaConf.to_container(
                compose_resolved("train", [f"experiment={e}", f"stage={stage}", "name=x"]),
                resolve=True,
            )
        )
        for e in ("paper", "recipe", "demo")
    )
    changed = {k: (paper[k], recipe[k]) for k in paper if paper[k] != recipe[k]}
    assert changed == {
        "data.sampling": ("uniform", "foreground"),
        "data.foreground_prob": (0.5, 0.67),
        "trainer.precision": ("32-true", "auto"),
        "loss.batch_dice": (True, False),
        "model.deep_supervision": (False, True),
    }
    assert set(recipe) == set(paper)
    keys = ("data.sampling", "data.foreground_prob", "loss.smooth", "loss.batch_dice")
    keys += ("model.deep_supervision",)
    for key in (*keys, "trainer.precision"):
        assert demo[key] == recipe[key]


def test_demo_zoom_in_is_a_time_budget_over_one_cosine_cycle_and_zoom_out_is_fixed():
    """The demo's zoom-in fits its epochs to 600 s (at most 150, one cycle: the combination
    train.check_time_budget accepts); zoom-out keeps its two epochs and two snapshots."""
    from stroke_seg.train import check_time_budget

    zoom_in, zoom_out = (
        compose_resolved("train", ["experiment=demo", f"stage={s}", "name=x"])
        for s in ("zoom_in", "zoom_out")
    )
    assert zoom_in.callbacks.time_budget.seconds == zoom_in.stage.time_budget_s == 600
    assert zoom_in.trainer.max_epochs == zoom_in.optim.restart_period_epochs == 150
    assert list(zoom_in.stage.snapshot_epochs) == []
    check_time_budget(zoom_in)  # accepted
    assert zoom_out.stage.time_budget_s is None and zoom_out.trainer.max_epochs == 2
    assert list(zoom_out.stage.snapshot_epochs) == [1, 2]


def test_inference_post_processing_is_off_by_default():
    for name in ("evaluate", "predict"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            assert compose(config_name=name).min_lesion_mm3 == 0
