"""Fixtures for the interoperability tests.

The runner (infra/test-all.sh) starts real Kafka and adpipe's schema registry
and passes where they are through the environment; nothing here mocks them.
"""
import json
import os
import subprocess
import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient


def _required(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests through infra/test-all.sh")
    return value


@pytest.fixture(scope="session")
def bootstrap():
    return _required("ADPIPE_BOOTSTRAP")


@pytest.fixture(scope="session")
def registry_url():
    return _required("ADPIPE_REGISTRY_URL")


@pytest.fixture(scope="session")
def adpipe_bin():
    return _required("ADPIPE_BIN")


@pytest.fixture(scope="session")
def registry(registry_url):
    return SchemaRegistryClient({"url": registry_url})


@pytest.fixture()
def topic(bootstrap):
    """A fresh 3-partition topic (auto-creation is off on the local clusters)."""
    name = f"interop-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)]).values():
        future.result(timeout=30)
    return name


@pytest.fixture(scope="session")
def schemas_dir():
    return os.path.join(os.path.dirname(__file__), "..", "..", "schemas")


def load_schema(schemas_dir, name):
    with open(os.path.join(schemas_dir, f"{name}.avsc")) as handle:
        return handle.read()


def run_adpipe(adpipe_bin, registry_url, bootstrap, *args, stdin=None):
    """Runs the adpipe CLI and returns (exit code, stdout lines, stderr)."""
    completed = subprocess.run(
        [adpipe_bin, *args, "--brokers", bootstrap, "--registry", registry_url],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]
    return completed.returncode, lines, completed.stderr
