"""The separate local cluster: a driver in this process joins it with its token."""

from __future__ import annotations

import os

import pytest
import ray

from cvae_ray.apps.cluster import init_ray, local_cluster


@pytest.mark.slow
def test_this_process_joins_the_local_cluster_it_started():
    # `ray` is imported (and its settings read) before local_cluster sets the token:
    # the driver must still present it, or the cluster refuses it (InvalidAuthToken).
    assert not ray.is_initialized()
    before = os.environ.get("RAY_AUTH_TOKEN")
    with local_cluster(num_cpus=1) as address:
        assert os.environ["RAY_AUTH_MODE"] == "token" and os.environ["RAY_AUTH_TOKEN"] != before
        started = init_ray(address, logging_level="ERROR")
        try:
            assert started is False
            assert ray.cluster_resources()["CPU"] == 1
            assert ray.get(ray.put("joined")) == "joined"
        finally:
            ray.shutdown()
    assert os.environ.get("RAY_AUTH_TOKEN") == before
