"""Test harness shared by every test module: ComfyUI hosts, tiny models, browser, workflows."""
