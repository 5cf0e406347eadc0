"""The measured executor's keys and devices: a measurement stands for one number of batch groups (another
count is measured anew), and ``auto`` measures on CUDA only, not on other accelerators."""

from __future__ import annotations

import pytest
import torch

from approxdrop.models import executor_choice
from approxdrop.models.executor_choice import Probe, measured_executor, uses_measurement
from approxdrop.ops import Dispatcher, outputs_agree
from approxdrop.search import distribution_for


@pytest.mark.parametrize("device", ["mps", "xpu", "meta"])
def test_auto_measures_on_cuda_only_not_on_other_accelerators(device):
    """On a device the rule was not measured on and no dispatcher serves, auto keeps the rule."""
    assert uses_measurement("auto", torch.device(device)) is False
    assert uses_measurement("measured", torch.device(device)) is True


def test_each_number_of_groups_is_measured_on_its_own(monkeypatch):
    """Two groups and four groups split the same rows into blocks of other sizes: two measurements, and the
    same count again is remembered."""
    timed: list[str] = []

    def fake_timer(fn) -> float:
        fn()
        timed.append(fn.name)
        return {"masked": 1.0, "compact": 0.5}[fn.name]

    monkeypatch.setattr(executor_choice, "_HOST", Dispatcher(None, fake_timer, outputs_agree, say=lambda line: None))
    probe = Probe(8, 16, 2, distribution_for(0.5, 16), 0.5)
    cpu = torch.device("cpu")
    for groups in (2, 4, 2, 4):
        assert measured_executor(probe, 32, groups, torch.float32, cpu) == "compact"
    assert timed == ["masked", "compact"] * 2


@pytest.mark.parametrize("executor", ["masked", "compact"])
def test_a_named_executor_is_kept_whatever_the_rule_would_choose(executor):
    """The rule picks compact for the paper's MLP and masked for a tiny one; a named executor overrides both."""
    from approxdrop.models.mlp import ApproxDropoutMLP

    paper = ApproxDropoutMLP([784, 2048, 2048, 10], 0.5, "row-g4", executor=executor)
    tiny = ApproxDropoutMLP([8, 16, 16, 2], 0.5, "row-g4", executor=executor)
    assert paper.executor_for(torch.randn(128, 784)) == executor
    assert tiny.executor_for(torch.randn(4, 8)) == executor
