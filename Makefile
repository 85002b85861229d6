# The whole set-up on a fresh machine: `make run` starts the server, `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := docker-registry skopeo

.PHONY: run test bench system-deps

run: $(VENV)/.installed system-deps
	$(VENV)/bin/cnr-oci serve $(ARGS)

test: $(VENV)/.installed system-deps
	$(PY) -m pytest -q $(ARGS)

bench: $(VENV)/.installed system-deps
	$(PY) bench/run.py $(ARGS)

# apt-get install only what is missing.
system-deps:
	@missing=""; \
	command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	command -v skopeo >/dev/null || missing="$$missing skopeo"; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@
