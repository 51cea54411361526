# stroke_seg — `make help` lists the targets.
# Every target that runs Python first makes the project's own virtual environment (.venv),
# installing torch pinned first (a bare torch requirement could pull a multi-GB CUDA build),
# then this package with its test tools. GPU users: make install TORCH_VERSION=<their build>.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEMO_SUBJECTS ?= 40
DEMO_DATA ?= data/synthetic_2mm
# Independent synthetic test sets (other seeds, so other subjects than training/validation):
# 30 test scans (seed 1), 30 external scans (seed 2), and 30 domain-randomised scans (seed 3,
# other tissue and lesion contrasts than the generator's default: a stress set), and 30 scans
# whose lesions alone have other contrasts (seed 4, randomise=lesion: lesions unlike the
# training ones on familiar scans), and 30 scans whose lesions come from a second, separately
# written simulator (seed 5, lesions=blob: other shapes, places, contrasts and borders).
DEMO_TEST ?= data/synthetic_2mm_test
DEMO_EXTERNAL ?= data/synthetic_2mm_external
DEMO_RANDOMISED ?= data/synthetic_2mm_randomised_test
DEMO_LESIONS ?= data/synthetic_2mm_lesion_test
DEMO_SIMULATOR ?= data/synthetic_2mm_blob_test
DEMO_TEST_SUBJECTS ?= 30
DEMO_FINAL = runs/demo/zoom_out/checkpoints/last.ckpt
DEMO_MODELS = "models={final: $(DEMO_FINAL), ensemble: [$$(ls runs/demo/zoom_out/checkpoints/snapshot_epoch*.ckpt | paste -sd, -)]}"
# Extra key=value overrides for `make bench` (conf/bench.yaml), e.g.
# BENCH_ARGS="sections=[train] options=[fp32,bf16]" or BENCH_ARGS="device=cuda all=true".
BENCH_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: help install demo test test-fast lint format bench gpu-check clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv and install torch + stroke_seg (+ test tools)

demo: $(STAMP) ## synthetic data at 2 mm, zoom-in, zoom-out, evaluation on five independent 30-scan sets (2-core CPU: under 15 min)
	$(BIN)/python -m stroke_seg.data.synthetic out=$(DEMO_DATA) n=$(DEMO_SUBJECTS) seed=0 spacing=2
	$(BIN)/python -m stroke_seg.data.synthetic out=$(DEMO_TEST) n=$(DEMO_TEST_SUBJECTS) seed=1 spacing=2 quiet=true
	$(BIN)/python -m stroke_seg.data.synthetic out=$(DEMO_EXTERNAL) n=$(DEMO_TEST_SUBJECTS) seed=2 spacing=2 quiet=true
	$(BIN)/python -m stroke_seg.data.synthetic out=$(DEMO_RANDOMISED) n=$(DEMO_TEST_SUBJECTS) seed=3 spacing=2 randomise=true quiet=true
	$(BIN)/python -m stroke_seg.data.synthetic out=$(DEMO_LESIONS) n=$(DEMO_TEST_SUBJECTS) seed=4 spacing=2 randomise=lesion quiet=true
	$(BIN)/python -m stroke_seg.data.synthetic out=$(DEMO_SIMULATOR) n=$(DEMO_TEST_SUBJECTS) seed=5 spacing=2 lesions=blob quiet=true
	$(BIN)/python train.py experiment=demo stage=zoom_in overwrite=true
	$(BIN)/python train.py experiment=demo stage=zoom_out overwrite=true ckpt=runs/demo/zoom_in/checkpoints/last.ckpt
	@$(BIN)/python -c "import json; s = json.load(open('runs/demo/zoom_out/summary.json')); print(f\"demo: final validation DSC {s['final_val_dsc']:.3f} after zoom-in&out ({s['n_val']} held-out synthetic scans)\")"
	$(BIN)/python evaluate.py data.root=$(DEMO_TEST) split=all output=runs/demo/eval/test overwrite=true $(DEMO_MODELS)
	$(BIN)/python evaluate.py data.root=$(DEMO_EXTERNAL) split=all output=runs/demo/eval/external overwrite=true "models={final: $(DEMO_FINAL)}"
	$(BIN)/python evaluate.py data.root=$(DEMO_RANDOMISED) split=all output=runs/demo/eval/randomised overwrite=true "models={final: $(DEMO_FINAL)}"
	$(BIN)/python evaluate.py data.root=$(DEMO_LESIONS) split=all output=runs/demo/eval/other_lesions overwrite=true "models={final: $(DEMO_FINAL)}"
	$(BIN)/python evaluate.py data.root=$(DEMO_SIMULATOR) split=all output=runs/demo/eval/other_simulator overwrite=true "models={final: $(DEMO_FINAL)}"
	@for s in test external randomised other_lesions other_simulator; do echo "== runs/demo/eval/$$s ($$(grep -m1 -o '[0-9]* scans' runs/demo/eval/$$s/report.md))"; sed -n 's/^- \*\*intensity checks\*\*: /intensity checks: /p' runs/demo/eval/$$s/report.md; awk '/^## Table 2/{p=1; next} /^## /{p=0} p' runs/demo/eval/$$s/report.md; done

test: $(STAMP) ## run every test, the slow ones too (what CI runs)
	$(BIN)/python -m pytest

test-fast: $(STAMP) ## run the tests not marked slow
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP) ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## ruff format + autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ## time training, data loading, inference, evaluation here -> bench/results.json (CPU: ~15 min; BENCH_ARGS="key=value ...")
	$(BIN)/python -m stroke_seg.bench out=bench/results.json $(BENCH_ARGS)

gpu-check: $(STAMP) ## one CUDA GPU, <= 8 min: paper training steps (time, memory), a 1 mm recipe run with DSC, fp32/AMP inference -> bench/gpu_check.json
	$(BIN)/python -m stroke_seg.bench.gpu_check out=bench/gpu_check.json

clean: ## remove run outputs and caches (keeps .venv and data/)
	rm -rf runs outputs multirun .pytest_cache .ruff_cache bench
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
