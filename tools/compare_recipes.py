"""Side-by-side comparison of training recipes on the demo data (docs/training.md).

Each row trains the demo network in the zoom-in&out schedule (``experiment=demo``, 2 mm
synthetic data, CPU) with one recipe option changed, then scores the final model and the
snapshot ensemble on the 30-scan test set (seed 1), and the final model on the 30-scan
external set (seed 2), on 30 domain-randomised scans (seed 3) and on 30 scans whose lesions
alone are randomised (seed 4, ``randomise=lesion``: other lesion contrasts on familiar
scans), and records the training wall-clock. The demo's zoom-in trains for a wall-clock
budget (600 s, ``stage.time_budget_s``), so every row that keeps it runs at equal zoom-in
wall-clock on any machine, and a row that costs more per step (deep supervision, the
augmentations) trains fewer epochs; the rows built with `zoom_in_epochs` fix the epochs
instead, so that they are the same on every machine. The first row is the paper's recipe at
the demo's scale (uniform crops, batch Dice with machine epsilon, no deep supervision, no
augmentation), so that every
other row reads as "this option against the paper at this budget".

Rows run one after the other in fresh processes (``train.py`` / ``evaluate.py``, exactly the
commands a user types), so that each has the whole CPU. The data sets are the Makefile's
``make demo`` ones (generated if absent).

    python tools/compare_recipes.py                          # DEFAULT_ROWS, about an hour
    python tools/compare_recipes.py rows=paper,demo,smooth1  # a subset (see ROWS)
    python tools/compare_recipes.py out=runs/compare         # where runs and the table go
    python tools/compare_recipes.py rows=demo keep=true      # re-score rows already trained
    python tools/compare_recipes.py report_only=true         # the tables from compare.json
    python tools/compare_recipes.py rows=paper,demo seed=43 out=runs/compare_seed43  # spread

Writes ``<out>/compare.json`` (every figure) and ``<out>/compare.md``: the table, then the
paired per-scan DSC difference of each row against the row it changes one option of
(``Row.versus``), read from the evaluations' ``cases.csv``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stroke_seg.stats import bootstrap_ci

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TRAIN_DATA = "data/synthetic_2mm"
TEST_DATA = "data/synthetic_2mm_test"
EXTERNAL_DATA = "data/synthetic_2mm_external"
RANDOMISED_TEST_DATA = "data/synthetic_2mm_randomised_test"
LESION_TEST_DATA = "data/synthetic_2mm_lesion_test"
# Lesions of the second simulator (stroke_seg.data.blob_lesions): other shapes, places,
# contrasts and borders than any training lesion, on familiar scans.
SIMULATOR_TEST_DATA = "data/synthetic_2mm_blob_test"
# The training subjects of TRAIN_DATA with the generator's domain randomisation (other tissue
# and lesion contrasts per subject; docs/synthetic_data.md), for the generalisation rows.
RANDOMISED_TRAIN_DATA = "data/synthetic_2mm_randomised"
DATASETS = {
    TRAIN_DATA: ["n=40", "seed=0", "spacing=2"],
    TEST_DATA: ["n=30", "seed=1", "spacing=2"],
    EXTERNAL_DATA: ["n=30", "seed=2", "spacing=2"],
    RANDOMISED_TEST_DATA: ["n=30", "seed=3", "spacing=2", "randomise=true"],
    LESION_TEST_DATA: ["n=30", "seed=4", "spacing=2", "randomise=lesion"],
    SIMULATOR_TEST_DATA: ["n=30", "seed=5", "spacing=2", "lesions=blob"],
}
RANDOMISED_TRAIN_ARGS = ["n=40", "seed=0", "spacing=2", "randomise=true"]  # rows=randomised
# The training subjects with lesions from both simulators, half each (lesions=mixed): for
# rows=mixed_lesions. Its "other simulator" column is then a simulator seen in training.
MIXED_TRAIN_DATA = "data/synthetic_2mm_mixed"
MIXED_TRAIN_ARGS = ["n=40", "seed=0", "spacing=2", "lesions=mixed"]
# 120 training subjects (the first 40 are TRAIN_DATA's: a subject depends on (seed, index)).
TRAIN_DATA_120 = "data/synthetic_2mm_120"
TRAIN_120_ARGS = ["n=120", "seed=0", "spacing=2"]

# The paper's recipe at the demo's scale: what experiment=demo changes from the paper besides
# size and precision (lesion-centred crops, one Dice per crop, deep supervision) set back to
# the paper's.
PAPER = ["data.sampling=uniform", "loss.batch_dice=true", "model.deep_supervision=false"]


def zoom_in_epochs(epochs: int) -> list[str]:
    """Overrides for a zoom-in of exactly `epochs` epochs in one cosine cycle, without the
    demo's time budget (the trials that fixed the epochs)."""
    return [
        f"demo_stages.zoom_in.max_epochs={epochs}",
        f"demo_stages.zoom_in.restart_period_epochs={epochs}",
        "demo_stages.zoom_in.time_budget_s=null",
    ]


@dataclass(frozen=True)
class Row:
    """One recipe: what it changes, the overrides of both training stages, the evaluation
    overrides, the row whose trained models it reuses (an evaluation-only option), and the
    row it differs from by one option (`versus`: the paired differences are against it)."""

    what: str
    train: list[str] = field(default_factory=list)
    evaluate: list[str] = field(default_factory=list)
    reuse: str | None = None
    versus: str | None = "demo"


ROWS: dict[str, Row] = {
    "paper": Row(
        "the paper's recipe (uniform crops, batch Dice, eps = 2.2e-16)", PAPER, versus=None
    ),
    "demo": Row(
        "paper + 2/3 lesion-centred crops + one Dice per crop + deep supervision (experiment=demo)",
        versus="paper",
    ),
    # One Dice per crop joined the demo on 2026-12-03 (+0.051 test over two seeds).
    "batch_dice": Row(
        "demo + Dice over the batch (the demo until 2026-12-03)", ["loss.batch_dice=true"]
    ),
    "appearance": Row("demo + augmentation=appearance", ["augmentation=appearance"]),
    # Dice eps = 1 was in the recipe until it lost to eps = 2.2e-16 in two seeds (2026-12-03).
    "smooth1": Row("demo + Dice eps = 1", ["loss.smooth=1.0"]),
    "smooth1_uniform": Row("paper + Dice eps = 1", [*PAPER, "loss.smooth=1.0"], versus="paper"),
    "postprocess": Row(
        "demo + min_lesion_mm3 chosen on val", evaluate=["min_lesion_mm3=auto"], reuse="demo"
    ),
    "fg90": Row("demo + 90 % lesion-centred crops", ["data.foreground_prob=0.9"]),
    # Deep supervision joined the demo on 2026-12-03 (test +0.036 and +0.155 in two seeds).
    "no_deep_supervision": Row(
        "demo without deep supervision (model.deep_supervision=false)",
        ["model.deep_supervision=false"],
    ),
    "standard": Row("demo + augmentation=standard", ["augmentation=standard"]),
    # Lesions of other contrasts (the lesion part of augmentation=appearance alone, with a
    # soft edge): for the lesions=randomise=lesion set and simulators not seen.
    "lesion_intensity": Row(
        "demo + lesion intensity x 0.8-1.8 in half the crops (soft edge, sigma 1 voxel)",
        [
            "data.augmentation.lesion_prob=0.5",
            "data.augmentation.lesion_scale=[0.8,1.8]",
            "data.augmentation.lesion_edge_sigma=1.0",
        ],
    ),
    # The same over the whole range of the randomise=lesion set's core factors (0.7-2.2 x the
    # training lesions' 0.95-1.25 x CSF): darker lesions and lesions up to grey-matter bright.
    "lesion_wide": Row(
        "demo + lesion intensity x 0.7-2.5 in half the crops (soft edge, sigma 1 voxel)",
        [
            "data.augmentation.lesion_prob=0.5",
            "data.augmentation.lesion_scale=[0.7,2.5]",
            "data.augmentation.lesion_edge_sigma=1.0",
        ],
    ),
    "fp32": Row("demo in fp32 (where auto picks bf16)", ["trainer.precision=32-true"]),
    # Lesions from two simulators in training (half the subjects each); the other-lesion set
    # (randomise=lesion) stays unseen, the other-simulator set is then a seen simulator.
    "mixed_lesions": Row(
        "demo on training scans whose lesions come from both simulators (lesions=mixed)",
        [f"data.root={MIXED_TRAIN_DATA}"],
    ),
    "randomised": Row(
        "demo on domain-randomised training scans", [f"data.root={RANDOMISED_TRAIN_DATA}"]
    ),
    # The trials of docs/training.md "What limits the demo" (2026-12-02, equal zoom-out).
    "lr3e-3": Row("demo + zoom-in LR 3e-3", ["demo_stages.zoom_in.lr=3e-3"]),
    "wide": Row(
        "demo + widths 16/32/64/128, GroupNorm(8), zoom-in 14 epochs (about equal zoom-in time)",
        ["model.widths=[16,32,64,128]", "model.groups=8", *zoom_in_epochs(14)],
    ),
    "crop32": Row(
        "demo + zoom-in on 32^3 crops for 60 epochs (one cycle; about equal zoom-in time)",
        ["demo_stages.zoom_in.crop_size=[32,32,32]", *zoom_in_epochs(60)],
    ),
    # The trials of 2026-12-03 (docs/training.md "The CPU demo"): zoom-in epochs fixed, so
    # that the rows are the same on every machine (the demo itself trains for 600 s).
    "epochs28": Row(
        "demo with 28 zoom-in epochs (the demo before the time budget)", zoom_in_epochs(28)
    ),
    "epochs84": Row("demo with 84 zoom-in epochs", zoom_in_epochs(84)),
    "epochs126": Row("demo with 126 zoom-in epochs", zoom_in_epochs(126)),
    "subjects120": Row(
        "demo on 120 training subjects (91 train), 28 zoom-in epochs (as many steps as epochs84)",
        [f"data.root={TRAIN_DATA_120}", *zoom_in_epochs(28)],
    ),
    "subjects120_epochs44": Row(
        "demo on 120 training subjects, 44 zoom-in epochs (as many steps as epochs126)",
        [f"data.root={TRAIN_DATA_120}", *zoom_in_epochs(44)],
    ),
    "crop32_fg90": Row(
        "crop32 + 90 % lesion-centred crops",
        [
            "demo_stages.zoom_in.crop_size=[32,32,32]",
            *zoom_in_epochs(60),
            "data.foreground_prob=0.9",
        ],
        versus="crop32",
    ),
}
# `python tools/compare_recipes.py` with no rows=: the rows that fit in an hour on a 2-core
# CPU (about 12 min each); the others on request.
DEFAULT_ROWS = ("paper", "demo", "batch_dice", "no_deep_supervision", "postprocess")


def sh(args: list[str], log: Path) -> float:
    """Run a command in the checkout, its output appended to `log`; returns its seconds."""
    start = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + " ".join(args) + "\n")
        f.flush()
        done = subprocess.run(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - start


def ensure_data(log: Path, names: list[str]) -> None:
    extra = {RANDOMISED_TRAIN_DATA: RANDOMISED_TRAIN_ARGS} if "randomised" in names else {}
    if "mixed_lesions" in names:
        extra[MIXED_TRAIN_DATA] = MIXED_TRAIN_ARGS
    if any(name.startswith("subjects120") for name in names):
        extra[TRAIN_DATA_120] = TRAIN_120_ARGS
    for folder, args in {**DATASETS, **extra}.items():
        if not (REPO / folder / "dataset.json").is_file():
            sh([PY, "-m", "stroke_seg.data.synthetic", f"out={folder}", *args, "quiet=true"], log)


def summary(path: Path) -> dict:
    s = json.loads(path.read_text())
    m = s["metrics"]
    return {
        "n": s["n"],
        "dsc": m["dsc"]["mean"],
        "dsc_ci95": m["dsc"]["ci95"],
        "hd95_mm": m.get("hd95_mm", {}).get("median"),
        "lesion_f1": m.get("lesion_f1", {}).get("mean"),
    }


# The scans of each evaluation set, and the models it scores (the snapshot ensemble on the
# test set only).
EVAL_DATA = {
    "test": TEST_DATA,
    "external": EXTERNAL_DATA,
    "randomised": RANDOMISED_TEST_DATA,
    "lesions": LESION_TEST_DATA,
    "simulator": SIMULATOR_TEST_DATA,
}
MODELS = {
    "test": ("final", "ensemble"),
    "external": ("final",),
    "randomised": ("final",),
    "lesions": ("final",),
    "simulator": ("final",),
}
LABELS = tuple(MODELS)
PAIRED_RESAMPLES = 5000


def eval_folder(out: Path, name: str, label: str) -> Path:
    """A row's evaluation on one set: evaluate.py's ``output=``, relative to the checkout."""
    return Path("runs") / out.name / (ROWS[name].reuse or name) / "eval" / f"{name}_{label}"


def model_folder(out: Path, name: str, label: str, model: str = "final") -> Path:
    """Where one model's ``summary.json`` and ``cases.csv`` of that evaluation are: evaluate.py
    writes one folder per model when it scores several, else the files themselves."""
    folder = REPO / eval_folder(out, name, label)
    return folder / model if len(MODELS[label]) > 1 else folder


def cases_csv(out: Path, name: str, label: str, model: str = "final") -> Path:
    """The per-scan scores of a row's model on one evaluation set."""
    return model_folder(out, name, label, model) / "cases.csv"


def run_row(
    name: str, out: Path, log: Path, results: dict, keep: bool, seed: str | None = None
) -> dict:
    row = ROWS[name]
    run = f"{out.name}/{row.reuse or name}"
    runs = REPO / "runs" / run
    trained = (runs / "zoom_out" / "summary.json").is_file()
    seconds = 0.0
    seeded = [f"seed={seed}"] if seed is not None else []  # train.yaml's seed otherwise
    for stage in ("zoom_in", "zoom_out") if row.reuse is None and not (keep and trained) else ():
        extra = [f"ckpt=runs/{run}/zoom_in/checkpoints/last.ckpt"] if stage == "zoom_out" else []
        cmd = [PY, "train.py", "experiment=demo", f"stage={stage}", f"name={run}"]
        seconds += sh([*cmd, "overwrite=true", *row.train, *seeded, *extra], log)
    snapshots = sorted((runs / "zoom_out" / "checkpoints").glob("snapshot_epoch*.ckpt"))
    last = f"runs/{run}/zoom_out/checkpoints/last.ckpt"
    ensemble = ",".join(str(p.relative_to(REPO)) for p in snapshots)
    model_args = {
        ("final",): f"models={{final: {last}}}",
        ("final", "ensemble"): f"models={{final: {last}, ensemble: [{ensemble}]}}",
    }
    evals = {}
    post = []
    if row.evaluate:  # post-processing: chosen on the training run's validation scans
        val = f"runs/{run}/eval/{name}_val"
        sh([PY, "evaluate.py", f"data.root={TRAIN_DATA}", "split=val", f"output={val}",
            "overwrite=true", f"ckpt={last}", *row.evaluate], log)  # fmt: skip
        post = [f"min_lesion_mm3={val}/postprocessing.json"]
    for label, data in EVAL_DATA.items():
        folder = eval_folder(out, name, label)
        sh([PY, "evaluate.py", f"data.root={data}", "split=all", f"output={folder}",
            "overwrite=true", model_args[MODELS[label]], *post], log)  # fmt: skip
        evals[label] = {
            m: summary(model_folder(out, name, label, m) / "summary.json") for m in MODELS[label]
        }
    zoom_out = json.loads((runs / "zoom_out" / "summary.json").read_text())
    zoom_in = json.loads((runs / "zoom_in" / "summary.json").read_text())
    return {
        "row": name,
        "what": row.what,
        "train_overrides": row.train,
        "eval_overrides": row.evaluate,
        "reuses": row.reuse,
        "seed": seed,  # None: train.yaml's seed (42)
        # Lightning's fit time of both stages (summary.json), and the commands' wall-clock
        # with start-up and data caching when this invocation trained them.
        "train_seconds": round(zoom_in["train_seconds"] + zoom_out["train_seconds"], 1),
        "command_seconds": round(seconds, 1) if seconds else None,
        # what the budget decided (or the fixed count): rows differ in it, not in time
        "zoom_in_epochs": zoom_in["epochs"],
        "val_dsc": zoom_out["final_val_dsc"],
        "n_val": zoom_out["n_val"],
        **evals,
    }


def table(rows: list[dict]) -> str:
    head = (
        "| recipe | val DSC (n) | test DSC final [95 % CI] | test DSC ensemble | external DSC "
        "| randomised DSC | other-lesion DSC | other-simulator DSC | test HD95 mm (median) "
        "| test lesion F1 | zoom-in epochs | train wall-clock |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )

    def dsc(m: dict) -> str:
        return f"{m['dsc']:.3f} [{m['dsc_ci95'][0]:.3f}, {m['dsc_ci95'][1]:.3f}] (n={m['n']})"

    lines = []
    for r in rows:
        t, e = r["test"]["final"], r["test"]["ensemble"]
        x, z = r["external"]["final"], r["randomised"]["final"]
        # rows scored before a set existed lack it (rerun with keep=true): a dash
        other, simulator = (
            dsc(r[label]["final"]) if label in r else "—" for label in ("lesions", "simulator")
        )
        lines.append(
            f"| {r['row']}: {r['what']} | {r['val_dsc']:.3f} ({r['n_val']}) "
            f"| {dsc(t)} | {e['dsc']:.3f} | {dsc(x)} | {z['dsc']:.3f} (n={z['n']}) "
            f"| {other} | {simulator} "
            f"| {t['hd95_mm']:.1f} | {t['lesion_f1']:.3f} | {r['zoom_in_epochs']} "
            f"| {r['train_seconds'] / 60:.1f} min |"
        )
    return head + "\n".join(lines) + "\n"


def read_dsc(path: Path) -> dict[str, float]:
    with path.open(newline="") as f:
        return {r["subject"]: float(r["dsc"]) for r in csv.DictReader(f)}


def paired_difference(row: dict[str, float], base: dict[str, float]) -> dict:
    """Mean per-scan DSC difference over the scans both were scored on, with a percentile
    bootstrap CI (`stroke_seg.stats.bootstrap_ci`: the same resamples for every pair)."""
    subjects = sorted(row.keys() & base.keys())
    diff = np.array([row[s] - base[s] for s in subjects])
    lo, hi = bootstrap_ci(diff, n_resamples=PAIRED_RESAMPLES)
    return {"n": len(subjects), "mean": float(diff.mean()), "ci95": [lo, hi]}


def paired_differences(out: Path, names: list[str]) -> dict[str, dict]:
    """{"<row> − <versus>": {label: difference}} for the rows whose `versus` row is in names,
    then {"<row>: ensemble − final": {"test": difference}} for every row (the snapshot
    ensemble is scored on the test set only)."""
    found = {}
    for name in names:
        base = ROWS[name].versus
        if base in names:
            found[f"{name} − {base}"] = {
                label: paired_difference(
                    read_dsc(cases_csv(out, name, label)), read_dsc(cases_csv(out, base, label))
                )
                for label in LABELS
                if cases_csv(out, name, label).is_file() and cases_csv(out, base, label).is_file()
            }
    for name in names:
        ensemble, final = (read_dsc(cases_csv(out, name, "test", m)) for m in ("ensemble", "final"))
        found[f"{name}: ensemble − final"] = {"test": paired_difference(ensemble, final)}
    return found


def paired_table(diffs: dict[str, dict]) -> str:
    head = (
        "| paired per scan | test | external | randomised | other lesions | other simulator |\n"
        "|---|---|---|---|---|---|\n"
    )

    def cell(d: dict | None) -> str:
        if d is None:
            return "—"
        return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] (n={d['n']})"

    lines = [
        f"| {what} | " + " | ".join(cell(d.get(x)) for x in LABELS) + " |"
        for what, d in diffs.items()
    ]
    return head + "\n".join(lines) + "\n"


def report(out: Path, results: dict) -> str:
    """compare.md: the table of every row run so far, then the paired differences."""
    names = [n for n in ROWS if n in results]
    # a compare.json from before a row was renamed or removed: say what is left out
    gone = [n for n in results if n not in ROWS]
    left_out = f"\nLeft out (rows no longer in ROWS): {', '.join(gone)}.\n" if gone else ""
    return (
        table([results[n] for n in names])
        + left_out
        + f"\nDSC differences (95 % bootstrap CI, {PAIRED_RESAMPLES} resamples): each row "
        "against the row it changes one option of (final models), and each row's snapshot "
        "ensemble against its final model:\n\n" + paired_table(paired_differences(out, names))
    )


def main(argv: list[str]) -> int:
    opts = dict(a.split("=", 1) for a in argv)
    names = opts.get("rows", ",".join(DEFAULT_ROWS)).split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"rows={unknown[0]} is not a row; use {', '.join(ROWS)}")
    out = REPO / opts.get("out", "runs/compare")
    results_path = out / "compare.json"
    if opts.get("report_only") == "true":  # the tables again, from the rows already run
        if not results_path.is_file():
            raise SystemExit(f"{results_path} does not exist; run the rows first")
        (out / "compare.md").write_text(report(out, json.loads(results_path.read_text())))
        print((out / "compare.md").read_text())
        return 0
    out.mkdir(parents=True, exist_ok=True)
    log = out / "compare.log"
    ensure_data(log, names)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in names:
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {ROWS[name].what}", flush=True)
        reuse = ROWS[name].reuse
        if reuse and reuse not in results:
            raise SystemExit(f"row {name} reuses the models of row {reuse}; run {reuse} first")
        results[name] = run_row(
            name, out, log, results, opts.get("keep") == "true", opts.get("seed")
        )
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        (out / "compare.md").write_text(report(out, results))
        print(table([results[name]]).splitlines()[-1], flush=True)
    print((out / "compare.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
