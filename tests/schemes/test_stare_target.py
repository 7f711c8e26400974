"""STARE's relative entropy target and the adaptive schedule's saturation warning, on synthetic traces."""

import math

import pytest

from stare_lit.errors import ConfigError
from stare_lit.schemes.stare import STARE


def test_relative_target_is_a_fraction_of_the_first_steps_mean_and_the_gate_waits_for_it():
    s = STARE(target_entropy=None, relative_target=0.5, baseline_steps=4)
    for h in (1.0, 0.8, 0.6):  # baseline not in yet: target unknown, gate closed
        s.update(h)
        assert not s.gate_on and math.isnan(s.target_entropy)
    s.update(0.4)  # 4th reading: target = 0.5 * mean(1.0, 0.8, 0.6, 0.4) = 0.35; 0.4 >= 0.35
    assert s.target_entropy == pytest.approx(0.35) and not s.gate_on
    s.update(0.3)
    assert s.gate_on and s.target_entropy == pytest.approx(0.35)
    s.update(2.0)  # later readings never move the target
    assert not s.gate_on and s.target_entropy == pytest.approx(0.35)


def test_relative_target_skips_non_finite_readings():
    s = STARE(target_entropy=None, relative_target=1.0, baseline_steps=2)
    for h in (0.2, math.nan, math.inf, 0.4):
        s.update(h)
    assert s.target_entropy == pytest.approx(0.3)


def test_absolute_target_is_unchanged():
    s = STARE(target_entropy=0.3)
    s.update(0.2)
    assert s.gate_on and s.target_entropy == 0.3
    s.update(0.5)
    assert not s.gate_on


@pytest.mark.parametrize("kwargs", [dict(target_entropy=0.3, relative_target=0.9),
                                    dict(target_entropy=None, relative_target=None)])
def test_exactly_one_target(kwargs):
    with pytest.raises(ConfigError, match="exactly one of target_entropy"):
        STARE(**kwargs)


@pytest.mark.parametrize(("kwargs", "setting"), [
    (dict(target_entropy=None, relative_target=0.0), "relative_target"),
    (dict(target_entropy=None, relative_target=0.9, baseline_steps=0), "baseline_steps"),
    (dict(saturation_window=0), "saturation_window"),
])
def test_bad_relative_settings(kwargs, setting):
    with pytest.raises(ConfigError, match=setting):
        STARE(**kwargs)


def test_relative_target_state_survives_a_round_trip():
    a = STARE(target_entropy=None, relative_target=0.5, baseline_steps=3, adaptive=True, alpha=0.1)
    a.update(0.6)
    a.update(0.4)
    b = STARE(target_entropy=None, relative_target=0.5, baseline_steps=3, adaptive=True, alpha=0.1)
    b.load_state_dict(a.state_dict())
    for s in (a, b):  # the same third reading completes the same baseline on both
        s.update(0.5)  # target 0.5 * 0.5 = 0.25; above it: W 1.1 -> 1.0
        s.update(0.1)  # below: W 1.0 -> 1.1
    assert a.state_dict() == b.state_dict()
    assert b.target_entropy == pytest.approx(0.25) and b.gate_on and b.w == pytest.approx(1.1)


def test_saturation_warns_once_after_the_window_at_the_bound(recwarn):
    # O1: W climbs by 0.1 from 1.1 to w_max 1.3 in 2 steps; then 3 steps at the bound below target warn.
    s = STARE(target_entropy=0.5, adaptive=True, alpha=0.1, w=1.1, w_max=1.3, saturation_window=3)
    trace = [0.3, 0.3, 0.3, 0.3]  # after step 2 W = 1.3: steps 2, 3, 4 at the bound -> 3 at step 4
    for h in trace:
        s.update(h)
    assert s.saturated_steps == 3 and s.saturated
    assert len([w for w in recwarn if "no authority left" in str(w.message)]) == 1
    for h in [0.3] * 5:
        s.update(h)
    assert len([w for w in recwarn if "no authority left" in str(w.message)]) == 1  # once
    s.update(0.9)  # entropy above target: the count restarts, the event stays logged
    assert s.saturated_steps == 0 and s.saturated


def test_no_saturation_while_entropy_recovers_or_below_the_window(recwarn):
    s = STARE(target_entropy=0.5, adaptive=True, alpha=0.1, w=1.3, w_max=1.3, saturation_window=3)
    for h in [0.3, 0.3, 0.6, 0.3, 0.3]:  # at most 2 in a row below target at the bound
        s.update(h)
    assert not s.saturated
    assert not [w for w in recwarn if "no authority left" in str(w.message)]


def test_c2_saturation_needs_m_at_its_bound_too():
    s = STARE(target_entropy=0.5, adaptive=True, alpha=0.1, w=1.3, w_max=1.3, m=0.9, m_min=0.5,
              variant="C2", saturation_window=2)
    s.update(0.3)  # W at bound, M 0.8
    s.update(0.3)  # M 0.7
    assert not s.saturated and s.saturated_steps == 0
    for _ in range(4):  # M 0.6, 0.5 + 1e-16 (rounding), 0.5 (at the bound: 1), 0.5 (2)
        s.update(0.3)
    assert s.saturated and s.m == pytest.approx(0.5)


def test_saturation_state_survives_a_round_trip():
    a = STARE(target_entropy=0.5, adaptive=True, alpha=0.1, w=1.3, w_max=1.3, saturation_window=3)
    a.update(0.3)
    a.update(0.3)
    b = STARE(target_entropy=0.5, adaptive=True, alpha=0.1, w=1.3, w_max=1.3, saturation_window=3)
    b.load_state_dict(a.state_dict())
    assert b.saturated_steps == 2 and not b.saturated
    b.update(0.3)
    assert b.saturated
