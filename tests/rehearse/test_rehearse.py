"""The pod-slice rehearsal's scenarios (``isnet_jax.rehearse``), each a test, on the tiny model.

Every host is a real ``python -m isnet_jax.main --distributed`` process; the workdirs are
``gs://`` paths in the session's emulated bucket (the ``gcs`` fixture). The scenarios share one
uninterrupted reference run (exactness and preemption compare against it; the host-count
change resumes it), and the hosts share one compilation cache, so each topology compiles once.
"""

from __future__ import annotations

import pytest

from isnet_jax.rehearse import scenarios

pytestmark = pytest.mark.slow

# Fewer hosts than the script's default 4 x 2 keep the suite within CI's two cores: the
# mechanics (coordination service, gloo collectives, one shared checkpoint, per-host data
# positions) are the same for 2 hosts as for 4.
HOSTS, DEVICES = 2, 2


@pytest.fixture(scope="module")
def rehearsal(gcs, tmp_path_factory):
    r = scenarios.Rehearsal(gcs, tmp_path_factory.mktemp("rehearsal_logs"), hosts=HOSTS,
                            devices=DEVICES, model="tiny", steps=6)
    yield r
    scenarios.kill_all_hosts()


# In the script's order: exact makes the uninterrupted reference run that preemption and
# bucket_fault compare with and host_count resumes. One xdist worker takes the whole file
# (setup.cfg's --dist=loadfile), so the reference is made once.
@pytest.mark.parametrize("name", scenarios.SCENARIOS)
def test_scenario(rehearsal, name):
    verdict = scenarios.run_scenario(rehearsal, name)
    print(verdict.line())
    assert verdict.ok, verdict.line()
