# AI-Salesman, lean PyTorch. `make train` runs the whole pipeline; `make test` runs the test suite.
# Both install what they need into .venv first, from nothing but python3 and pip.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

# No CONFIG: config.py's defaults, the default recipe. CONFIG=configs/<name>.json: another size of it.
CONFIG ?=
NAME   := $(basename $(notdir $(CONFIG)))
RUN    ?= runs/$(or $(NAME),default)
# Each config has its own corpus (its size is in the config): data/ for the default, data/<name>/ else.
DATA   ?= data$(if $(NAME),/$(NAME))
CONFIG_FLAG := $(if $(CONFIG),--config $(CONFIG))
MODEL  ?=
# RESUME=1: continue an interrupted `make train` (pretraining is kept when it finished; GRPO gets --resume).
RESUME ?=

# Idle OpenMP threads sleep instead of spinning: on a shared or busy machine spinning threads slow
# training several times over.
export OMP_WAIT_POLICY ?= PASSIVE
# NumPy's small matrix products (DOGA's retrieval) run on one thread: on busy cores, OpenBLAS's thread pool
# makes such a product many times slower than one thread does.
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: runtime install test bench data train seeds eval ablations chat clean FORCE

# Two stamp files: reinstall only when a requirements file changes. `runtime` is what training and chat
# import (requirements.txt); `install` adds the tests' reference, the report's plot and the linter
# (requirements-test.txt), which `make train` does not wait for.
runtime: $(VENV)/.runtime
install: $(VENV)/.installed

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed: requirements-test.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

# The linter (ruff.toml) first, then the whole suite.
test: install
	$(PY) -m ruff check .
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests

bench: install
	$(PY) bench/generate.py
	$(PY) bench/logprob.py
	$(PY) bench/retrieval.py
	$(PY) bench/customer.py
	$(PY) bench/grpo_step.py
	$(PY) bench/calls_step.py

# The simulated corpus: three agents write calls, then a split by call into train and test. Its size, seed
# and noise are the config's data section, read by config.py (missing keys take their defaults).
# $(DATA)/recipe.json records them and is rewritten only when they change, so make simulates again exactly
# when the config asks for another corpus than the one in $(DATA).
data: $(DATA)/train.jsonl

$(DATA)/recipe.json: FORCE | runtime
	$(PY) simulate.py $(CONFIG_FLAG) --recipe $@

$(DATA)/train.jsonl: $(DATA)/recipe.json
	$(PY) simulate.py $(CONFIG_FLAG) --out $(DATA)/calls.jsonl
	$(PY) corpus.py split $(DATA)/calls.jsonl --train $(DATA)/train.jsonl --test $(DATA)/test.jsonl

# The whole pipeline: corpus -> tokenizer + tiny base model -> GRPO directly on the base -> summary -> GRPO
# over whole calls ($(RUN)/calls: the policy plays calls with the best scripted plan's outlines).
# With MODEL=/path/to/Qwen2.5 (a local HF folder) the base is that checkpoint and pretraining is skipped, and so
# is the whole-call stage: its defaults are sized for the tiny model (run calls_grpo.py with a `calls` section
# sized for the checkpoint). RESUME=1 keeps each finished stage and resumes the one that was interrupted.
# DOGA's script library is built first from the same training calls: pretraining and GRPO prompt with its
# outlines as the agent does at inference (train as it infers), and `make chat` and `make eval` use it.
CALLS = $(PY) calls_grpo.py $(CONFIG_FLAG) --library $(RUN)/scripts --data $(DATA) $(if $(RESUME),--resume)
train: runtime data
	$(PY) doga.py build --corpus $(DATA)/train.jsonl --out $(RUN)/scripts
ifeq ($(MODEL),)
	$(if $(RESUME),test -f $(RUN)/base/model.safetensors || )$(PY) pretrain.py $(CONFIG_FLAG) --data $(DATA) \
		--out $(RUN)/base --library $(RUN)/scripts
	$(if $(RESUME),test -f $(RUN)/summary.json || )$(PY) grpo.py $(CONFIG_FLAG) --model $(RUN)/base --data $(DATA) \
		--out $(RUN) --library $(RUN)/scripts $(if $(RESUME),--resume)
	$(CALLS) --model $(RUN)/final --out $(RUN)/calls
else
	$(PY) grpo.py $(CONFIG_FLAG) --model $(MODEL) --data $(DATA) --out $(RUN) --library $(RUN)/scripts \
		$(if $(RESUME),--resume)
endif

# More GRPO seeds of the same recipe, on the same base and script library (make train's run is seed 0):
# $(RUN)-seed1, $(RUN)-seed2, each with its whole-call stage. make eval then reports every seed and their mean:
# a headline is the mean over seeds, never the best run.
SEEDS ?= 1 2
seeds: runtime data
	for seed in $(SEEDS); do \
		$(PY) grpo.py $(CONFIG_FLAG) --seed $$seed --model $(RUN)/base --data $(DATA) --out $(RUN)-seed$$seed \
			--library $(RUN)/scripts --no-summary $(if $(RESUME),--resume) && \
		$(CALLS) --seed $$seed --model $(RUN)-seed$$seed/final --out $(RUN)-seed$$seed/calls || exit 1; \
	done

# The trained model answers with the prompt and answer lengths its run recorded (run.json beside it).
chat: runtime
	$(PY) doga.py chat --model $(RUN)/final --library $(RUN)/scripts

# Base and GRPO, each with a static prompt, DOGA and DOGA with planned moves, and the whole-call stage with planned
# DOGA: reports/default/report.md (needs `make train`; with `make seeds` first, every seed and their mean).
# Measured on the test customers, on which no recipe choice was made (the headline).
eval: install data
	$(PY) evaluate.py $(CONFIG_FLAG) --run $(RUN) --data $(DATA) --out reports/$(notdir $(RUN)) \
		--customers test $(if $(MODEL),--base $(MODEL)) $(if $(wildcard $(RUN)-seed*),--seed-runs $(wildcard $(RUN)-seed*))

# Every arm of the paper's comparisons, trained and evaluated: reports/ablations/report.md. The arms are
# research choices, so they are measured on the validation customers (ablations.py).
ablations: install data
	$(PY) ablations.py --plan configs/ablations.json --data $(DATA) --default-run runs/default \
		--work runs/ablations --out reports/ablations

clean:
	rm -rf runs reports/*/checkpoints

FORCE:
