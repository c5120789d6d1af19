"""Cluster tests: a secure three-broker stack of their own (tests/support/cluster.py), started once
per session, and a namespace (database, topics, groups, ACLs) per test. They need neither the
default stack nor ``make stack-up``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.integration.procs import kill_leftovers
from tests.support.cluster import ClusterStack, Namespace, close_namespace, open_namespace


@pytest.fixture(scope="session")
def cluster_stack() -> Iterator[ClusterStack]:
    stack = ClusterStack.for_tests()
    t0 = time.monotonic()
    try:
        stack.up()
    except AssertionError as e:
        stack.down()
        pytest.fail(f"the cluster tests' stack did not start: {e}", pytrace=False)
    print(f"\n[cluster] secure three-broker stack up in {time.monotonic() - t0:.1f}s")
    try:
        yield stack
    finally:
        stack.down()


@pytest_asyncio.fixture
async def ns(cluster_stack: ClusterStack) -> AsyncIterator[Namespace]:
    namespace = await open_namespace(cluster_stack)
    yield namespace
    await close_namespace(namespace)


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    yield
    kill_leftovers()
