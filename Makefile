# The one entry point: `make demo` and `make test` work from a fresh clone with Python 3 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.svdharm-installed
SVDHARM := $(BIN)/svdharm

.PHONY: install demo test lint bench evaluate fuzz samples screenshots clean

# torch first, pinned, so that the extras' open range finds it installed: this release is a
# CPU build (an unpinned torch on Linux is a CUDA build of several GB). `make TORCH=torch`
# takes the newest instead.
TORCH ?= torch==2.13.0

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[test,lint,bench,dask,monai,torchio]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	rm -rf out
	# Each site holds PNG, JPEG and DICOM copies of one kind of image: one rule says so (a DICOM's
	# Modality would otherwise be a kind of its own).
	$(SVDHARM) fit-reference sample_images/fundus/site_a -o out/fundus-reference.json --kind 'fundus=*'
	$(SVDHARM) fit-reference sample_images/radiograph/site_a -o out/radiograph-reference.json --kind 'CR=*'
	$(SVDHARM) harmonize sample_images/fundus out/harmonized/fundus --reference out/fundus-reference.json --kind 'fundus=*'
	$(SVDHARM) harmonize sample_images/radiograph out/harmonized/radiograph --reference out/radiograph-reference.json --kind 'CR=*' --report
	$(SVDHARM) augment sample_images out/augmented --copies 3 --seed 42 --report
	$(SVDHARM) augment sample_images/radiograph out/harmonized-augmented --copies 2 --seed 42 --reference out/radiograph-reference.json --kind 'CR=*'
	$(SVDHARM) bands sample_images/fundus/site_b/fundus_b0.png -o out/fundus_b0_bands.png
	# Masks: statistics over the fundus disc only, its black surround written back unchanged.
	$(SVDHARM) fit-reference sample_images/fundus/site_a -o out/fundus-reference-masked.json --mask auto --kind 'fundus=*'
	$(SVDHARM) harmonize sample_images/fundus/site_b out/harmonized/fundus-masked --reference out/fundus-reference-masked.json --mask auto --kind 'fundus=*'
	# Evidence: can a classifier tell the sites apart, before and after?
	$(SVDHARM) compare sample_images/fundus/site_a sample_images/fundus/site_b --mask auto --kind 'fundus=*' -o out/compare-fundus-before.html --json out/compare-fundus-before.json
	$(SVDHARM) compare sample_images/fundus/site_a out/harmonized/fundus-masked --mask auto --kind 'fundus=*' -o out/compare-fundus-after.html --json out/compare-fundus-after.json
	# Band cuts chosen on the two sites themselves (no label here, so nothing guards the biology:
	# tune says so).
	$(SVDHARM) tune sample_images/fundus/site_a sample_images/fundus/site_b --target-site site_a --mask auto --kind 'fundus=*' -o out/fundus-reference-tuned.json --json out/tune-fundus.json --report out/tune-fundus.html
	# Volumes: a CT series (Hounsfield units, pooled over its 16 slices) and NIfTI MR heads.
	$(SVDHARM) fit-reference sample_images/ct/site_a -o out/ct-reference.json
	$(SVDHARM) harmonize sample_images/ct/site_b out/harmonized/ct --reference out/ct-reference.json --report
	$(SVDHARM) fit-reference sample_images/mr/site_a -o out/mr-reference.json
	$(SVDHARM) harmonize sample_images/mr/site_b out/harmonized/mr --reference out/mr-reference.json
	$(SVDHARM) bands sample_images/ct/site_b/head/IM0008.dcm -o out/ct_b_bands.png
	@echo "demo outputs are in out/ (HTML reports next to each run's log)"

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check svdharm_cli tests scripts bench examples fuzz
	$(BIN)/ruff format --check svdharm_cli tests scripts bench examples fuzz
	$(BIN)/mypy svdharm_cli
	$(BIN)/lint-imports

# Speed and memory against a researcher's baseline, as ratios in one run (not tests).
bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/transforms.py
	$(BIN)/python bench/device.py
	$(BIN)/python bench/client_memory.py
	$(BIN)/python bench/nightly.py

# Fidelity of harmonization on images that ship with packages, under simulated site shifts;
# then the downstream experiment: does a model trained with svdharm generalize to another site?
evaluate: install
	$(BIN)/python bench/fidelity.py
	$(BIN)/python bench/downstream.py

# Coverage-guided fuzzing of the read path (atheris) for FUZZ_SECONDS. A crash ends the
# campaign (libFuzzer's plain mode; atheris does not survive its fork mode); either way
# what it found is saved to fuzz/crashes/, which the test suite's damaged corpus includes.
FUZZ_SECONDS ?= 600
fuzz: install
	$(BIN)/python -m pip install --quiet -e '.[fuzz]'
	$(BIN)/python fuzz/fuzz_read.py --seeds
	mkdir -p fuzz/findings
	$(BIN)/python fuzz/fuzz_read.py -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 \
	  -timeout=20 -artifact_prefix=fuzz/findings/ fuzz/seeds; status=$$?; \
	  $(BIN)/python fuzz/fuzz_read.py --save; exit $$status

samples: install
	$(BIN)/python scripts/make_sample_images.py

# Refresh the pictures in docs/ from a demo run (needs chromium).
screenshots: demo
	$(BIN)/python -c "from PIL import Image; Image.open('out/fundus_b0_bands.png').save('docs/bands-panel.jpg', quality=85)"
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --disable-background-networking \
	  --window-size=1200,2400 --screenshot=docs/report-demo.png \
	  "file://$(CURDIR)/$$(ls out/harmonized/radiograph/*.html | head -1)"
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --disable-background-networking \
	  --window-size=1100,1500 --screenshot=docs/compare-demo.png "file://$(CURDIR)/out/compare-fundus-after.html"

clean:
	rm -rf out $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
