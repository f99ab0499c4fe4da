"""The harness's package check: skip with the reason on a developer's machine, fail under CI."""
from __future__ import annotations

import json

import pytest

from harness.needs import installed


def test_an_installed_module_is_returned():
    assert installed("json", "anything") is json


def test_a_missing_module_skips_with_the_reason(monkeypatch):
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="surely_not_installed_hp3 is not installed: the test needs it"):
        installed("surely_not_installed_hp3", "the test needs it")


def test_a_missing_module_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="surely_not_installed_hp3 is not installed.*CI must have it"):
        installed("surely_not_installed_hp3", "the test needs it")
