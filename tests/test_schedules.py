import math
from types import SimpleNamespace

import pytest

from lossbench.training.schedules import lr_at


def tc(**kw):
    base = dict(
        warmup_epochs=0, lr_schedule="constant", step_size=10, gamma=0.1, min_lr=0.0, epochs=10
    )
    return SimpleNamespace(**{**base, **kw})


def test_constant():
    assert [lr_at(e, 0.1, tc()) for e in range(3)] == [0.1] * 3


def test_step_like_torch_steplr():
    c = tc(lr_schedule="step", step_size=3, gamma=0.5)
    assert [lr_at(e, 1.0, c) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]


def test_cosine_like_torch_cosineannealinglr():
    c = tc(lr_schedule="cosine", epochs=10, min_lr=0.01)
    lrs = [lr_at(e, 0.1, c) for e in range(10)]
    assert lrs[0] == pytest.approx(0.1)
    # torch: eta_t = eta_min + (eta_0 - eta_min)(1 + cos(pi t / T_max)) / 2
    assert lrs[5] == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi / 2)) / 2)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_linear_warmup_then_schedule():
    c = tc(lr_schedule="cosine", warmup_epochs=3, epochs=13)
    lrs = [lr_at(e, 0.4, c) for e in range(13)]
    assert lrs[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert lrs[-1] < 0.4
