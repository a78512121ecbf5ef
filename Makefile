# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export MUJOCO_GL ?= egl

.PHONY: demo test setup

setup: $(VENV)/.installed

# MuJoCo renders headless through EGL; install the system library where a bare image lacks it.
$(VENV)/.installed: pyproject.toml
	@ldconfig -p | grep -q 'libEGL.so.1' || (apt-get update -qq && apt-get install -y -qq libegl1 libgl1-mesa-dri)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/hybrid demo

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q
