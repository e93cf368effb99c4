# The project's interface. Every target builds the virtual environment it needs from
# pyproject.toml first (again whenever pyproject.toml changes), so a fresh clone needs
# nothing installed by hand.
#
#   make train [EXPERIMENT=file, default experiments/shapes_conv_gru.toml] [RUN=dir] [SET="section.field=value ..."]
#   make caption IMG=path [RUN=dir | MODEL=file.keras] [BEAM=width] [TOP=n]   (TOP: the n best beams with their
#                log-probabilities; with no RUN or MODEL, the shipped models/flickr8k.keras, else the latest run)
#                IMG="a.jpg b.png some/folder/" [OUT=captions.csv or .jsonl]   (batch: the model loads once, one row
#                per image with path, caption and error; the exit status is the number of images that failed)
#                [ATTENTION=out.png]   (attention decoders: one panel per word with its attention map)
#                [SET=...]   ("generation.sampler=top_p" samples a caption; "generation.no_repeat_ngram_size=3"
#                            never repeats three words)
#   make export RUN=dir OUT=file.keras   (one file: encoder and decoder weights, config, vocabulary)
#   make evaluate [RUN=dir] [SPLIT=test] [SET=...] [OUT=file.json] [BEAM=width]
#   make compare [EXPERIMENTS="a.toml b.toml" or a folder, default experiments/shapes/] [OUT=dir, default runs/compare]
#                [SEEDS="0 1 2"] [SET=...]   (trains what has no finished run; writes compare.csv/.md and PNGs)
#                [RESULTS=name]   (also writes the table into docs/results.md between <!-- results:name -->
#                and <!-- /results -->; README=name is the former name and still works)
#   make bench [OUT=file.json] [SET="data.root=/path/to/flickr8k ..."]   (speed ratios and peak memory; about 10 min on 2 cores)
#              [PART=decoders]   (only the decoder-training epoch seconds and FLOP utilization, about 3 min)
#   make rehearsal [IMAGES=113287] [STEPS=30] [OUT=file.json] [WORK=dir]   (the attention decoder on a synthetic
#                COCO-sized data set, 8.5 GB of features in shards: peak memory, seconds a step, projected COCO
#                epoch; WORK keeps the shards for the next run, default a temporary folder; docs/guide/scale.md)
#   make inspect IMG=path [RUN=dir | EXPERIMENT=file] [SET=...] [OUT=dir]   (PNGs: the encoder's input,
#                first-layer filters, each block's strongest feature maps, attention; default OUT runs/inspect/<image>)
#   make serve [MODEL=file.keras or run dir] [PORT=8000]   (a web page on 127.0.0.1 that captions an uploaded
#              photo, with its top 3 beams and each word's attention; JSON API: POST /api/caption, field "image")
#   make test   (every test, on TEST_WORKERS cores (default 2): what CI runs; under 8 min on 2 cores)
#   make test-fast   (the inner loop, under 2 min: leaves out the tests marked slow, i.e. those that train a
#                    model, start a process, a server or a browser, or take over about 2 s; tests/conftest.py
#                    marks the ones using a trained fixture, a new slow test carries @pytest.mark.slow)
#
# BEAM=width decodes with beam search of that width instead of the run's sampler (greedy by default).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
SPLIT ?= test
# `make compare README=name`, the former name of RESULTS=name, still works.
RESULTS ?= $(README)
PORT ?= 8000
# pytest-xdist workers for make test and test-fast; --dist loadgroup keeps the tests that share a
# trained run (and each file with a module-scoped fixture) on one worker, so each is trained once.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

.PHONY: train caption export evaluate compare bench rehearsal inspect serve test test-fast venv clean-cache

venv: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $(INSTALLED)

train: $(INSTALLED)
	$(PY) -m captioning train $(if $(EXPERIMENT),--experiment $(EXPERIMENT)) $(if $(RUN),--run $(RUN)) $(if $(SET),--set $(SET))

caption: $(INSTALLED)
	@test -n "$(IMG)" || { echo "usage: make caption IMG=\"image.jpg [more.png some/folder/]\" [RUN=dir | MODEL=file.keras, default models/flickr8k.keras] [OUT=captions.csv|.jsonl] [BEAM=width] [TOP=n] [ATTENTION=out.png] [SET=...]" >&2; exit 2; }
	@$(PY) -m captioning caption $(IMG) $(if $(RUN),--run $(RUN)) $(if $(MODEL),--model "$(MODEL)") $(if $(OUT),--out "$(OUT)") $(if $(BEAM),--beam $(BEAM)) $(if $(TOP),--top $(TOP)) $(if $(ATTENTION),--attention "$(ATTENTION)") $(if $(SET),--set $(SET))

export: $(INSTALLED)
	@test -n "$(RUN)" -a -n "$(OUT)" || { echo "usage: make export RUN=path/to/run OUT=file.keras" >&2; exit 2; }
	@$(PY) -m captioning export --run "$(RUN)" --out "$(OUT)"

evaluate: $(INSTALLED)
	$(PY) -m captioning evaluate --split $(SPLIT) $(if $(RUN),--run $(RUN)) $(if $(SET),--set $(SET)) $(if $(OUT),--out $(OUT)) $(if $(BEAM),--beam $(BEAM))

compare: $(INSTALLED)
	$(PY) -m captioning compare $(EXPERIMENTS) $(if $(OUT),--out $(OUT)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(SET),--set $(SET)) $(if $(RESULTS),--results $(RESULTS))

bench: $(INSTALLED)
	$(PY) -m benchmarks bench $(if $(OUT),--out $(OUT)) $(if $(SET),--set $(SET)) $(if $(PART),--$(PART))

rehearsal: $(INSTALLED)
	$(PY) -m benchmarks rehearsal $(if $(IMAGES),--images $(IMAGES)) $(if $(STEPS),--steps $(STEPS)) $(if $(OUT),--out "$(OUT)") $(if $(WORK),--work "$(WORK)") $(if $(SET),--set $(SET))

inspect: $(INSTALLED)
	@test -n "$(IMG)" || { echo "usage: make inspect IMG=path/to/image [RUN=dir | EXPERIMENT=file] [SET=...] [OUT=dir]" >&2; exit 2; }
	@$(PY) -m captioning inspect "$(IMG)" $(if $(RUN),--run $(RUN)) $(if $(EXPERIMENT),--experiment $(EXPERIMENT)) $(if $(SET),--set $(SET)) $(if $(OUT),--out "$(OUT)")

serve: $(INSTALLED)
	$(PY) -m captioning serve $(if $(MODEL),--model "$(MODEL)") --port $(PORT)

test: $(INSTALLED)
	$(PYTEST)

test-fast: $(INSTALLED)
	$(PYTEST) -m "not slow"

clean-cache:
	rm -rf data/cache
