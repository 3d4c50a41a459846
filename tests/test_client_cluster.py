"""rawrt.client behind the local cluster (deploy/local-cluster.sh): the node that serves it
is killed, and the client carries on through nginx on another node, losing nothing.

The cluster's own driver lives in test_deploy_cluster.py; this module brings up a cluster of
its own, since it kills one of its nodes. Clients on 127.0.0.1 all hash to one node (sticky
`hash $remote_addr consistent`): the probe finds it, and publishers use source addresses
that land elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
from test_deploy_cluster import (
    SOURCES,
    Cluster,
    _alive,
    _cluster,
    channel_name,
    nodes_by_source,
    publish,
)

import rawrt.client
from rawrt.client import ClientConfig, Message

pytestmark = [pytest.mark.nginx, pytest.mark.redis, pytest.mark.slow]

STEP_S = 20.0  # bound on one expected arrival, a failover included
FAST = ClientConfig(backoff_min_s=0.05, backoff_max_s=0.5)


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with _cluster(tmp_path_factory.mktemp("client-cluster"), round_robin=False) as up:
        yield up


async def test_client_loses_nothing_when_its_node_is_killed(cluster: Cluster) -> None:
    served = await nodes_by_source(cluster, ["127.0.0.1", *SOURCES], rounds=1)
    victim = served["127.0.0.1"][0]
    elsewhere = next(s for s in SOURCES if served[s][0] != victim)
    pid = cluster.pids[f"node-{cluster.nodes.index(victim) + 1}"]
    channel = channel_name("client-failover")

    async with (
        asyncio.timeout(4 * STEP_S),
        rawrt.client.connect(cluster.url, config=FAST) as client,
    ):
        sub = client.subscribe(channel)
        await sub.ready()
        sent = [await publish(cluster, channel, n, "127.0.0.1") for n in range(5)]
        got = [await anext(sub) for _ in range(5)]
        os.kill(pid, signal.SIGKILL)  # a node of the cluster, started (and recorded) by `up`
        for _ in range(500):
            if not _alive(pid):
                break
            await asyncio.sleep(0.01)
        sent += [await publish(cluster, channel, n, elsewhere) for n in range(5, 15)]
        got += [await asyncio.wait_for(anext(sub), STEP_S) for _ in range(10)]
        assert client.connections >= 2
    assert all(isinstance(event, Message) for event in got), got
    assert [event.id for event in got] == sent
    assert [event.data for event in got if isinstance(event, Message)] == list(range(15))
