"""Docker images as DAGs through the real engine: round trip between two block stores,
base layers shared between images, and a bad DAG refused before ``docker load``.

Images are built FROM the offline busybox:latest with one small layer, labelled
``meca-node-test=1`` and removed afterwards.
"""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path

import pytest

from conftest import docker_engine
from meca_node.ipfs import dagpb
from meca_node.ipfs.cid import CID, DAG_PB
from meca_node.ipfs.unixfs import add_path
from meca_node.runtime.images import ImageDagError, dag_to_image, image_to_dag

from meca_node.store.blocks import BlockStore

pytestmark = [pytest.mark.integration, pytest.mark.docker]

BASE = "busybox:latest"
TEST_LABEL = {"meca-node-test": "1"}


def new_store(root: Path):
    return BlockStore(root)


def reachable(store, root: CID) -> list[CID]:
    seen, stack = {}, [root]
    while stack:
        cid = stack.pop()
        if cid not in seen:
            seen[cid] = None
            if cid.codec == DAG_PB:
                stack.extend(dagpb.link_cids(store.get(cid)))
    return list(seen)


def root_links(store, root: CID) -> dict[str, CID]:
    return {link.name: link.cid for link in dagpb.decode(store.get(root)).links}


@pytest.fixture(scope="module")
def client():
    return docker_engine(BASE)


@pytest.fixture
def build(client):
    """build(word) -> (tag, greeting): an image FROM busybox whose CMD prints greeting."""
    tags = []

    def make(word: str) -> tuple[str, str]:
        greeting = f"{word}-{uuid.uuid4().hex}"
        tag = f"meca-node-test/images:{greeting}"
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:  # COPY: no build container
            for name, text in [("Dockerfile", f'FROM {BASE}\nCOPY greeting /greeting\n'
                                              'CMD ["cat", "/greeting"]\n'),
                               ("greeting", f"{greeting}\n")]:
                info = tarfile.TarInfo(name)
                info.size = len(text.encode())
                tar.addfile(info, io.BytesIO(text.encode()))
        context.seek(0)
        tags.append(tag)
        client.images.build(fileobj=context, custom_context=True, tag=tag, pull=False,
                            labels=TEST_LABEL, rm=True, forcerm=True)
        return tag, greeting

    yield make
    import docker.errors

    for tag in tags:
        try:
            client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass


def image_ids(client) -> set[str]:
    return {i.id for i in client.images.list(all=True)}


def test_round_trip_through_a_second_store(client, build, tmp_path):
    tag, greeting = build("round")
    original = client.images.get(tag)
    a, b = new_store(tmp_path / "a"), new_store(tmp_path / "b")
    dag = image_to_dag(client, tag, a.put)
    assert [layer.digest for layer in dag.layers] == original.attrs["RootFS"]["Layers"]
    for cid in reachable(a, dag.cid):  # only what the DAG needs goes across
        b.put(cid, a.get(cid))
    client.images.remove(tag)

    assert dag_to_image(client, dag.cid, b.get, tmp_path) == [tag]
    assert client.images.get(tag).id == original.id  # the same config, so the same image
    out = client.containers.run(tag, remove=True, network_disabled=True, labels=TEST_LABEL)
    assert out == f"{greeting}\n".encode()
    assert list(tmp_path.glob("meca-image-*")) == []  # the exported tree is gone


def test_images_from_one_base_share_its_blocks(client, build, tmp_path):
    first, _ = build("one")
    second, _ = build("two")
    store = new_store(tmp_path / "s")
    one = image_to_dag(client, first, store.put)
    new: list[int] = []

    def put(cid: CID, data: bytes) -> None:
        if not store.has(cid):
            new.append(len(data))
        store.put(cid, data)

    two = image_to_dag(client, second, put)
    assert one.layers[:-1] == two.layers[:-1] and one.layers[-1] != two.layers[-1]
    base_dirs = root_links(store, one.cid).items() & root_links(store, two.cid).items()
    assert len(base_dirs) == len(two.layers) - 1  # each base layer's folder: one CID

    blocks = reachable(store, two.cid)
    total = sum(len(store.get(cid)) for cid in blocks)
    top = two.layers[-1].size
    print(f"second image: {len(blocks)} blocks, {total} bytes; new: {len(new)} blocks, "
          f"{sum(new)} bytes (its own layer: {top} bytes)")
    assert total > 2_000_000  # busybox itself
    assert top <= sum(new) < top + 16 * 1024  # its layer and a few small JSON blocks


@pytest.mark.parametrize("fault", ["missing", "corrupt"])
def test_a_bad_block_loads_nothing(client, build, tmp_path, fault):
    tag, _ = build(fault)
    store = new_store(tmp_path / "s")
    dag = image_to_dag(client, tag, store.put)
    image_id = client.images.get(tag).id
    victim = root_links(store, dag.cid)[f"{image_id.removeprefix('sha256:')}.json"]  # config
    client.images.remove(tag)
    before = image_ids(client)

    def get(cid: CID) -> bytes:
        if cid != victim:
            return store.get(cid)
        if fault == "missing":
            raise KeyError(f"block {cid} is not in the store")
        data = store.get(cid)
        return data[:-1] + bytes([data[-1] ^ 1])

    with pytest.raises(ImageDagError, match=str(victim)) as err:
        dag_to_image(client, dag.cid, get, tmp_path)
    assert "nothing was loaded" in str(err.value)
    assert image_ids(client) == before
    assert list(tmp_path.glob("meca-image-*")) == []


def test_a_dag_without_manifest_is_refused(client, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "layer.tar").write_bytes(b"not an image")
    store = new_store(tmp_path / "store")
    root = add_path(tmp_path / "folder", store.put).cid
    with pytest.raises(ImageDagError, match="not an image DAG"):
        dag_to_image(client, root, store.get, tmp_path)


def test_an_image_pushed_from_one_node_loads_on_another_sharing_base_blocks(
        client, build, tmp_path):
    """Two node processes share this machine's engine: the image is removed after node A
    adds it, so node B's load really comes from A's blocks. A second image FROM the same
    base then moves only its own layer and metadata."""
    import subprocess
    import sys

    from meca_node.sim import Cluster
    from meca_node.sim.cluster import child_env

    def cli(node, *args):
        r = subprocess.run([sys.executable, "-m", "meca_node", *args, "--quiet",
                            "--data-dir", str(node.data_dir)], capture_output=True, text=True,
                           timeout=120, env=child_env())
        assert r.returncode == 0, r.stderr
        return r.stdout

    first, greeting1 = build("first")
    second, greeting2 = build("second")
    with Cluster(tmp_path / "c", 2, advert_interval_s=1.0) as cluster:
        a, b = cluster.nodes
        cluster.wait_mesh(timeout_s=15)
        cid1 = cli(a, "ipfs", "image", "add", first).split()[-1]
        cid2 = cli(a, "ipfs", "image", "add", second).split()[-1]
        client.images.remove(first)
        client.images.remove(second)
        out1 = cli(b, "ipfs", "image", "load", cid1)
        assert f"loaded {first}" in out1
        assert client.containers.run(first, remove=True, network_disabled=True,
                                     labels=TEST_LABEL) == f"{greeting1}\n".encode()
        out2 = cli(b, "ipfs", "image", "load", cid2)
        fetched1 = int(out1.split("fetched ")[1].split()[0])
        fetched2 = int(out2.split("fetched ")[1].split()[0])
        assert fetched1 > 1_000_000            # the whole busybox base came across
        assert fetched2 < 64 * 1024, out2      # only the new layer and small JSON
        assert client.containers.run(second, remove=True, network_disabled=True,
                                     labels=TEST_LABEL) == f"{greeting2}\n".encode()
