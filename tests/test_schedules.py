"""Learning-rate and target-EMA schedules against the paper's closed forms."""

import math

import numpy as np
import pytest

from byol.utils import schedules


def expected_learning_rate(step, batch_size, base_lr, total_steps, warmup_steps):
  scaled = base_lr * batch_size / 256.0
  if step < warmup_steps:
    return scaled * step / warmup_steps
  if step >= total_steps:
    return 0.0
  t = step - warmup_steps
  return scaled * 0.5 * (1.0 + math.cos(math.pi * t / (total_steps - warmup_steps)))


@pytest.mark.parametrize('step', [0, 1, 50, 100, 101, 550, 999, 1000, 1500])
def test_learning_schedule_matches_warmup_then_cosine(step):
  got = schedules.learning_schedule(
    step, batch_size=4096, base_learning_rate=0.2, total_steps=1000, warmup_steps=100
  )
  want = expected_learning_rate(step, 4096, 0.2, 1000, 100)
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)


def test_learning_schedule_peaks_at_scaled_rate_after_warmup():
  peak = schedules.learning_schedule(
    100, batch_size=512, base_learning_rate=0.3, total_steps=1000, warmup_steps=100
  )
  np.testing.assert_allclose(float(peak), 0.3 * 2, rtol=1e-6)


def test_learning_schedule_without_warmup_starts_at_peak():
  got = schedules.learning_schedule(
    0, batch_size=256, base_learning_rate=1.0, total_steps=10, warmup_steps=0
  )
  np.testing.assert_allclose(float(got), 1.0, rtol=1e-6)


def test_learning_schedule_rejects_warmup_longer_than_run():
  with pytest.raises(ValueError, match='warmup_steps'):
    schedules.learning_schedule(0, 256, 1.0, total_steps=10, warmup_steps=11)


@pytest.mark.parametrize('step', [0, 1, 250, 500, 999, 1000, 2000])
def test_target_ema_follows_cosine_to_one(step):
  base, max_steps = 0.996, 1000
  k = min(step, max_steps)
  want = 1.0 - (1.0 - base) * (math.cos(math.pi * k / max_steps) + 1.0) / 2.0
  got = schedules.target_ema(step, base_ema=base, max_steps=max_steps)
  np.testing.assert_allclose(float(got), want, rtol=0, atol=1e-7)


def test_target_ema_starts_at_base_and_ends_at_one():
  assert float(schedules.target_ema(0, 0.99, 100)) == pytest.approx(0.99, abs=1e-7)
  assert float(schedules.target_ema(100, 0.99, 100)) == pytest.approx(1.0, abs=1e-7)
