# fastrnn: `make run` sets up and trains on the bundled corpus; `make test` sets up and runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUN    ?= runs/tinyshakespeare

.PHONY: setup run test test-isa browser page-screenshot bench bench-results clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,plot]'
	touch $@

# Prepare the bundled tiny Shakespeare, train for two minutes the model fastrnn chooses for that budget on this
# machine (`--max-time` alone: the cell, its size and a cosine schedule to the end of the budget; its line says what
# and why), and print a sample of the model at its best validation loss (best.h5; train's last lines name its loss
# and step).
run: setup
	mkdir -p runs
	$(BIN)/fastrnn prepare fastrnn/data/tinyshakespeare.txt --output runs/tinyshakespeare.h5 --force
	$(BIN)/fastrnn train runs/tinyshakespeare.h5 --output $(RUN) --force --max-time 120
	$(BIN)/fastrnn sample $(RUN)/best.h5 --prime "ROMEO:" --length 600 --temperature 0.8 --seed 1

test: setup
	$(BIN)/python -m pytest -q tests

# The kernel-against-reference tests with the kernels compiled for each instruction set this CPU can run: generic
# x86-64 (SSE2 only), haswell (AVX2 + FMA), skylake-avx512 where the CPU has AVX-512, and the host; each with numba's
# cache of its own (.cache/numba-isa/<target>). ISA_SKIP=host leaves out the host (CI: `make test` just ran it).
ISA_TESTS ?= tests/test_isa.py tests/test_tiles.py tests/test_kernels.py tests/test_kernels_cells.py \
	tests/test_sample.py tests/test_bf16.py
ISA_SKIP ?=
test-isa: setup
	$(BIN)/python -m tools.isa_targets --skip "$(ISA_SKIP)" -- $(BIN)/python -m pytest -q -p no:cacheprovider $(ISA_TESTS)

# Headless Chromium for the test of serve's page (tests/test_page_browser.py skips without it): installed with
# apt-get when it is missing and this runs as root on Debian; otherwise (or if apt-get fails) a note, not an error.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then echo "chromium: $(CHROMIUM)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
		|| echo "chromium could not be installed: the browser tests will be skipped"; \
	else echo "no $(CHROMIUM) (apt-get install chromium, as root): the browser tests will be skipped"; fi

# docs/serve-page.png, the README's picture of serve's page: the model `make run` trained, in headless Chromium.
page-screenshot: setup
	$(BIN)/python -m tools.page_screenshot $(RUN)/best.h5 --output docs/serve-page.png

bench: setup
	$(BIN)/python -m benchmarks.throughput --quick

# The quick set of every benchmark into docs/benchmarks/<today>/, then docs/benchmarks.md (and README's block) from the
# newest result of each kind.
RESULTS ?= docs/benchmarks/$(shell date +%F)
bench-results: setup
	mkdir -p $(RESULTS)
	$(BIN)/python -m benchmarks.throughput --quick --json $(RESULTS)/throughput.json
	$(BIN)/python -m benchmarks.isa --quick --tiles --json $(RESULTS)/isa.json
	$(BIN)/python -m benchmarks.sampling --length 500 --repeats 1 --json $(RESULTS)/sampling.json
	$(BIN)/python -m benchmarks.prepare fastrnn/data/tinyshakespeare.txt --repeats 1 --json $(RESULTS)/prepare.json
	$(BIN)/python -m benchmarks.train_memory --steps 50 --json $(RESULTS)/train_memory.json
	$(BIN)/python -m tools.profile_speed --hidden 128 --batch 1 --threads 2 --steps 10 \
		--json $(RESULTS)/profile_speed_h128_n1.json
	$(BIN)/python -m benchmarks.report

clean:
	rm -rf $(VENV) runs build *.egg-info .cache/numba-isa
