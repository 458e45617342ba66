# The two set-up commands of the README: `make demo` and `make test`.
# Both create the virtual environment on first use. The tests run on two workers, a
# file at a time each (many tests wait on servers and subprocesses more than on the CPU). torch==2.13.0 is installed first,
# on its own: on CPU machines that release is a CPU wheel; any other spec pulls CUDA.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

# The browser tests drive Debian's Chromium (Playwright's own browser download cannot
# work offline) and the API benchmark's smoke test drives wrk: Debian's packages,
# installed once, as root or through sudo.
TEST_TOOLS := /usr/bin/chromium /usr/bin/wrk
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/dlvm demo

$(TEST_TOOLS):
	$(SUDO) apt-get install -y --no-install-recommends chromium wrk \
	  || ($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium wrk)

test: install $(TEST_TOOLS)
	$(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

clean:
	rm -rf $(VENV) .dlvm
