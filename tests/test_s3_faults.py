"""Object storage failing, and files no fixed part size could hold, against real S3
endpoints (moto's server, `TEST_S3_URL`), with a TCP proxy cutting the network where a
test needs it; nothing of S3 is mocked."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import uuid
from urllib.parse import urlsplit

import pytest

from common.exceptions import StorageError
from common.storage.s3 import S3Prefix
from common.storage.s3_client import MIB, S3Options, s3_client
from common.storage.s3_upload import MAX_PART_BYTES, MAX_PARTS, part_size
from tests.tcp_proxy import TcpProxy
from worker.embedded import start_s3

TIB = 1 << 40
MAX_OBJECT_BYTES = 5 * TIB  # S3's largest object


def new_bucket(options: S3Options) -> str:
    bucket = "vb-" + uuid.uuid4().hex[:16]
    s3_client(options).create_bucket(Bucket=bucket)
    return bucket


def parts_of(size: int, first: int) -> int:
    """How many parts the writer cuts `size` bytes into."""
    number, cut = 0, 0
    while cut < size:
        number += 1
        cut += part_size(first, number)
    return number


@pytest.mark.parametrize("first_mib", [5, 8, 1024])
def test_growing_parts_reach_s3_s_largest_object_within_10_000_parts(first_mib):
    """Fixed 8 MiB parts stop at 78 GiB (10,000 parts); growing ones pass 5 TiB from
    any first size the configuration allows (5 MiB up), none larger than S3's 5 GiB."""
    first = first_mib * MIB
    sizes = [part_size(first, n) for n in range(1, MAX_PARTS + 1)]

    assert sum(sizes) >= MAX_OBJECT_BYTES
    assert max(sizes) <= MAX_PART_BYTES
    assert sizes == sorted(sizes) and sizes[0] == first
    assert MAX_PARTS * 8 * MIB < 80 * (1 << 30)  # what a writer of one part size reaches


@pytest.fixture(scope="module")
def small_parts_s3(tmp_path_factory, s3_endpoint):
    """A moto server accepting 1 KiB parts, so 10,000 parts make a 10 MB file, not 50 GB."""
    if os.environ.get("TEST_S3_URL"):
        pytest.skip("a real store's 5 MiB smallest part would need a 50 GB file")
    server = start_s3(tmp_path_factory.mktemp("s3_small_parts"), min_part_bytes=1024)
    yield server.url
    server.stop()


@pytest.mark.slow
def test_a_file_larger_than_10_000_first_parts_is_written_whole(small_parts_s3):
    """About 3,400 parts (14 s here): the fewest that pass 10,000 first parts."""
    options = S3Options(endpoint=small_parts_s3, part_size=1024, uploads=8)
    storage = S3Prefix(new_bucket(options), "big", options=options)
    size = MAX_PARTS * 1024 + 300_000
    data = random.Random(7).randbytes(size)

    with storage.writer("embedding.csv") as out:
        for start in range(0, size, 7_777):  # odd writes: parts are cut at their sizes anyway
            out.write(data[start : start + 7_777])

    head = s3_client(options).head_object(Bucket=storage.bucket, Key=storage.key("embedding.csv"))
    parts = int(head["ETag"].strip('"').rsplit("-", 1)[1])  # a multipart object's ETag ends -N
    assert parts == parts_of(size, 1024) < MAX_PARTS < -(-size // 1024)
    with storage.open("embedding.csv") as stored:
        assert hashlib.sha256(stored.read()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert storage.stat("embedding.csv").size == size


@pytest.fixture
def proxy(s3_endpoint):
    """A TCP proxy in front of the session's S3 endpoint (plain HTTP only: a TLS
    endpoint's certificate does not name the proxy)."""
    parts = urlsplit(s3_endpoint)
    if parts.scheme != "http":
        pytest.skip("the proxy relays plain HTTP endpoints only")
    running = TcpProxy((parts.hostname, parts.port or 80)).start()
    yield running
    running.stop()


def through(proxy: TcpProxy, **options) -> S3Options:
    """The environment's S3 options, with the proxy as the endpoint."""
    return dataclasses.replace(S3Options.from_env(), endpoint=proxy.url, **options)


def test_a_read_that_loses_its_connection_resumes_from_the_byte_it_reached(proxy):
    direct = S3Options.from_env()
    storage = S3Prefix(new_bucket(direct), "vector_bak", options=through(proxy, timeout_s=5))
    data = random.Random(5).randbytes(8 * MIB)
    s3_client(direct).put_object(Bucket=storage.bucket, Key=storage.key("embedding.csv"), Body=data)
    proxy.cut_after = 3 * MIB  # every connection dies after 3 MiB of an answer

    with storage.open("embedding.csv") as stored:
        read = stored.read()

    assert hashlib.sha256(read).hexdigest() == hashlib.sha256(data).hexdigest()
    assert proxy.connections >= 3  # the first GET and at least two resumed ones


def test_a_read_does_not_resume_into_an_object_replaced_meanwhile(proxy):
    direct = S3Options.from_env()
    storage = S3Prefix(new_bucket(direct), "vector_bak", options=through(proxy, timeout_s=5))
    key = storage.key("embedding.csv")
    s3_client(direct).put_object(Bucket=storage.bucket, Key=key, Body=b"a" * (8 * MIB))
    proxy.cut_after = 3 * MIB

    with storage.open("embedding.csv") as stored:
        assert stored.read(MIB) == b"a" * MIB
        s3_client(direct).put_object(Bucket=storage.bucket, Key=key, Body=b"b" * (8 * MIB))
        with pytest.raises(StorageError, match=r"reading embedding\.csv failed: the object changed"):
            stored.read()
