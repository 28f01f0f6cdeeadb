# Set-up and everyday targets. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo

.PHONY: install demo test bench clean

install: $(STAMP)

# torch first, on its own: pip then takes the build that fits this machine (CUDA or CPU) before the
# rest of the stack asks for it; users with GPUs may install their own torch build beforehand.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/automl data demo $(DEMO)/data --task multiclass --n 32 --size 64
	$(BIN)/automl data demo $(DEMO)/heldout --task multiclass --n 16 --size 64 --seed 1
	$(BIN)/automl data inspect $(DEMO)/data/dataset.yaml
	$(BIN)/automl data audit $(DEMO)/data/dataset.yaml
	$(BIN)/automl debug --data $(DEMO)/data/dataset.yaml
	$(BIN)/automl search --space hybrid_loss --data $(DEMO)/data/dataset.yaml --study demo --runs-dir $(DEMO)/runs \
		--trials 8 --max-epochs 8 --subsample 1.0 --set model.encoder=tu-test_resnet
	$(BIN)/automl promote demo --runs-dir $(DEMO)/runs --top 2 --folds 3 --epochs 8
	$(BIN)/automl ensemble demo --runs-dir $(DEMO)/runs
	$(BIN)/automl predict demo --runs-dir $(DEMO)/runs --images $(DEMO)/heldout/images --out $(DEMO)/submission.csv \
		--format rle_csv --tta flip --evaluate $(DEMO)/heldout/dataset.yaml
	$(BIN)/automl report demo --runs-dir $(DEMO)/runs

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/data_loading.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/search_overhead.py
	$(BIN)/python bench/ray_background.py
	$(BIN)/python bench/search_efficiency.py
	$(BIN)/python bench/ensemble_memory.py
	$(BIN)/python bench/predict_throughput.py
	$(BIN)/python bench/small_dataset_budget.py
	$(BIN)/python bench/real_data.py
	$(BIN)/python bench/report_screenshot.py $(DEMO)/runs/demo/report/index.html docs/report.png

clean:
	rm -rf $(VENV) $(DEMO) runs .pytest_cache
