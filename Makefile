# Two commands do all set-up on a fresh machine:
#   make demo   - venv + install, then the platform's main job on an embedded local Ray cluster
#   make test   - venv + install with dev extras, lint, then the whole test suite (what CI runs)
#   make test-fast - the unit tests only (no Ray cluster, nothing slow): a developer's inner loop
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.strata-installed
# Debian packages the robot simulator needs for offscreen rendering (Mesa EGL; MUJOCO_GL=egl).
DEB_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri libgles2

.PHONY: demo test test-fast lint install system-deps bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c constraints.txt -e ".[robot,dev]"
	touch $(STAMP)

install: system-deps $(STAMP)

system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: missing Debian packages (rendering will be skipped):$$missing"; fi; \
	fi

demo: install
	$(PY) -m runtime.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest -q --durations=25

test-fast: install lint
	$(PY) -m pytest -q -m "not slow and not multinode and not ray_cluster" --durations=10

bench: install
	for name in engine_throughput serve_load fault_drill pointcloud_ops; do $(PY) -m benchmarks.$$name --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
