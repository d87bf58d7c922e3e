# Set-up and everyday commands. `make demo` and `make test` each create .venv when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CORES ?= 2
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv demo test slurm browser ffmpeg lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,slurm]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)  ## the whole DAG on the embedded synthetic dataset
	snakemake --cores $(CORES)
	@cat results/synthetic_auc.json

test: $(STAMP) slurm browser ffmpeg  ## the whole test suite
	pytest -q

slurm:  ## SLURM + munge for the real-SLURM test, where we are root with apt-get
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then tests/install/slurm.sh; \
	else echo "not root with apt-get: the real-SLURM test will be skipped"; fi

browser:  ## Chromium + chromedriver for the viewer's browser tests, where we are root with apt-get
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then tests/install/browser.sh; \
	else echo "not root with apt-get: the viewer's browser tests will be skipped"; fi

ffmpeg:  ## ffmpeg to serve sample videos for the live-scoring tests, where we are root with apt-get
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then tests/install/ffmpeg.sh; \
	else echo "not root with apt-get: the live-scoring tests that need ffmpeg will be skipped"; fi

lint: $(STAMP)
	ruff check .
	snakemake --lint

clean:
	rm -rf data features models results logs .snakemake
