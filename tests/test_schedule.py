import pytest
from omegaconf import OmegaConf

from sweeper.config import ScheduleConfig
from sweeper.schedule import lr_at


def sched(**kw):
    return OmegaConf.structured(ScheduleConfig(**kw))


def test_constant_is_the_peak_throughout():
    assert {lr_at(s, 100, 0.01, sched(name="constant")) for s in range(100)} == {0.01}


def test_step_multiplies_by_gamma_at_each_milestone():
    cfg = sched(name="step", milestones=[0.5, 0.75], gamma=0.1)
    assert [lr_at(s, 100, 1.0, cfg) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
def test_warmup_rises_to_the_peak_then_decays_to_final(name):
    cfg = sched(name=name, warmup=0.2, final=0.1)
    lrs = [lr_at(s, 100, 2.0, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1)  # 1/20 of the peak on the first of 20 warmup steps
    assert max(lrs) == pytest.approx(2.0) and lrs.index(max(lrs)) in (19, 20)
    assert all(a <= b for a, b in zip(lrs[:20], lrs[1:20]))  # rising
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))  # falling
    assert lrs[-1] == pytest.approx(0.2, abs=0.03)


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
@pytest.mark.parametrize("total", [1, 2, 7, 16, 64, 351])
def test_the_lr_never_passes_the_peak_whatever_the_number_of_steps(name, total):
    """warmup * total steps need not be whole: 0.2 of 16 steps is 3.2 (the smoke sweep's trials)."""
    cfg = sched(name=name, warmup=0.2, final=0.1)
    lrs = [lr_at(s, total, 0.5, cfg) for s in range(total)]
    assert max(lrs) <= 0.5
    assert lrs[0] > 0


def test_onecycle_decays_linearly():
    cfg = sched(name="onecycle", warmup=0.0, final=0.0)
    assert [lr_at(s, 4, 1.0, cfg) for s in range(4)] == pytest.approx([1, 0.75, 0.5, 0.25])
