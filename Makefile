# The two commands a new user needs: `make demo` (set up, then search on the embedded default) and `make test`.
# Both create .venv if needed, install archselect into it and, where possible (root + apt), the Debian
# Fashion-MNIST package.

VENV ?= .venv
PY := $(VENV)/bin/python
NB201_TABLE ?= ../shared/data/nb201/nb201.csv
PYTEST_ARGS ?= -n 2

.PHONY: setup demo test test-slow data clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q 'torch==2.13.0'
	$(PY) -m pip install -q -e '.[dev,plots]'
	touch $@

# Fashion-MNIST from Debian (dataset-fashion-mnist), when we are root and apt exists; otherwise skip quietly
# (archselect also finds the IDX files in --data-dir, or downloads them with data.download=true).
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist graphviz >/dev/null; \
	fi

# The demo: import the NAS-Bench-201 table when it is there (so every later command finds it), search, run four
# selectors on the one supernet and compare them, then write the HTML report.
DEMO_RUN ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

demo: setup data
	@if [ -f $(NB201_TABLE) ]; then $(VENV)/bin/archselect benchmark import $(NB201_TABLE); fi
	$(VENV)/bin/archselect search --config configs/demo.yaml --out $(DEMO_RUN)
	@echo "report:"; $(VENV)/bin/archselect report $(DEMO_RUN) | tail -1

test: setup data
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-slow: setup data
	$(VENV)/bin/pytest -q -p no:cacheprovider -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info
