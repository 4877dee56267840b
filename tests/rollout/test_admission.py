"""Admission control: the capacity rule (S + 1 + step) * B and the freshness window, by hand."""

import pytest

from biomni_jax.rollout.admission import AdmissionControl


def admit_all(ac):
  n = 0
  while ac.can_admit():
    ac.on_admit()
    n += 1
  return n


def test_s0_admits_exactly_one_batch_per_published_version():
  ac = AdmissionControl(max_staleness=0, groups_per_batch=4, version=10)
  assert admit_all(ac) == 4
  ac.publish(10)  # republishing the same version frees nothing
  assert admit_all(ac) == 0
  ac.publish(11)
  assert admit_all(ac) == 4 and ac.live_groups == 8 and ac.capacity == 8
  assert ac.is_fresh(11) and not ac.is_fresh(10) and ac.is_fresh(-1)


def test_s2_runs_two_batches_ahead_and_window_is_current_minus_s():
  ac = AdmissionControl(max_staleness=2, groups_per_batch=3, version=0)
  assert admit_all(ac) == 9
  ac.on_drop()  # a dropped group frees its place
  assert admit_all(ac) == 1
  ac.publish(5)
  assert ac.capacity == (2 + 1 + 5) * 3 and admit_all(ac) == 15
  assert ac.oldest_allowed == 3
  assert [ac.is_fresh(v) for v in (2, 3, 4, 5)] == [False, True, True, True]


def test_versions_must_not_decrease():
  ac = AdmissionControl(1, 1, version=3)
  with pytest.raises(ValueError, match="current 3, found 2"):
    ac.publish(2)
  with pytest.raises(ValueError):
    AdmissionControl(-1, 1)
