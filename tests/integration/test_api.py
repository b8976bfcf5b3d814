"""The Python API (meca_node/api.py) against a real node: run, map with bounded
concurrency in input order, typed errors, and the trio client."""

from __future__ import annotations

import pytest
import trio

from test_run_job import published_echo

import meca_node.api as meca

pytestmark = [pytest.mark.integration, pytest.mark.docker]


def test_run_and_map_through_the_local_node(tmp_path):
    with published_echo(tmp_path, 1, "price = 1\n") as (cluster, _folder):
        dev, provider, user = cluster.nodes
        client = meca.Client(user.data_dir)
        r = client.run("echo", {"input": "hello"}, max_price=2)
        assert (r.output, r.provider, r.price, r.paid) == (b"hello", provider.peer_id, 1, 2)
        inputs = [{"input": f"item {i}"} for i in range(12)]
        results = client.map("echo", inputs, concurrency=4, max_price=2)
        assert [x.text() for x in results] == [f"item {i}" for i in range(12)]
        with pytest.raises(meca.JobError) as err:
            client.run("no-such-task", {"input": "x"})
        assert err.value.reason == "unknown_offer" and "meca-node offers" in err.value.detail
        mixed = client.map("echo", [{"input": "ok"}, {"input": "dear"}], return_exceptions=True,
                           max_price=0)  # price 1 + fee 1 > 0: no provider fits
        assert all(isinstance(x, meca.JobError) and x.reason == "no_fit" for x in mixed)

        async def in_trio():
            api = meca.AsyncClient(user.data_dir)
            return await api.map("echo", [b"{\"input\": \"raw\"}"], max_price=2)
        assert [x.output for x in trio.run(in_trio)] == [b"raw"]
    with pytest.raises(meca.JobError, match="no node is running"):
        meca.Client(user.data_dir)
