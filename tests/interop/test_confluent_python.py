"""adpipe and Confluent's own Python client read each other's records and
agree on the registry's API, against real Kafka and adpipe's registry."""
import copy
import json
import random

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from conftest import load_schema, run_adpipe


def impression(n):
    return {
        "event_id": f"py-imp-{n:08d}",
        "event_time": 1_763_700_000_000 + n,
        "dc": random.choice(["dc1", "dc2"]),
        "user_id": f"user-{n % 37}",
        "request_id": f"req-{n}",
        "bid_id": f"bid-{n}",
        "campaign_id": 100 + n % 5,
        "creative_id": 5000 + n % 11,
        "advertiser_id": 7,
        "publisher_id": 300 + n % 3,
        "site": "news.example",
        "ssp": "ssp-a",
        "url": f"https://news.example/{n}?q=zażółć",
        "cost_micros": 1000 + n,
        "currency": "EUR",
        "device": "mobile",
        "country": "PL",
    }


def as_millis(record):
    """fastavro turns timestamp-millis into datetime; compare in milliseconds."""
    out = dict(record)
    value = out["event_time"]
    if not isinstance(value, int):
        out["event_time"] = int(round(value.timestamp() * 1000))
    return out


def consume_all(bootstrap, topic, count, deserializer=None):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"py-{topic}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    values = []
    try:
        for _ in range(600):
            if len(values) >= count:
                break
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            value = message.value()
            if deserializer is not None:
                value = deserializer(value, SerializationContext(topic, MessageField.VALUE))
            values.append((message.key().decode(), value))
    finally:
        consumer.close()
    return values


def test_confluent_producer_to_adpipe_consumer(bootstrap, registry, registry_url, adpipe_bin, topic, schemas_dir):
    serializer = AvroSerializer(registry, load_schema(schemas_dir, "impression"), conf={"auto.register.schemas": True})
    producer = Producer({"bootstrap.servers": bootstrap})
    sent = [impression(n) for n in range(200)]
    for record in sent:
        producer.produce(topic, key=record["user_id"],
                         value=serializer(record, SerializationContext(topic, MessageField.VALUE)))
    assert producer.flush(30) == 0

    code, lines, stderr = run_adpipe(adpipe_bin, registry_url, bootstrap, "consume", "--topic", topic, "--metadata")
    assert code == 0, stderr
    assert len(lines) == len(sent)
    by_id = {line["value"]["event_id"]: line for line in lines}
    for record in sent:
        line = by_id[record["event_id"]]
        assert line["value"] == record
        assert line["key"] == record["user_id"]
    # The id adpipe read is the one Confluent's serializer registered.
    registered = registry.get_latest_version(f"{topic}-value")
    assert {line["schema_id"] for line in lines} == {registered.schema_id}


def test_adpipe_producer_to_confluent_consumer(bootstrap, registry, registry_url, adpipe_bin, topic):
    sent = [impression(n) for n in range(100)]
    lines = [json.dumps(record) for record in sent]
    # Bad lines are reported with their line number; the rest go through.
    lines.insert(10, "{not json")
    broken = copy.deepcopy(sent[0])
    del broken["user_id"]
    lines.insert(50, json.dumps(broken))
    code, _, stderr = run_adpipe(adpipe_bin, registry_url, bootstrap, "produce", "--topic", topic,
                                 "--type", "impression", stdin="\n".join(lines) + "\n")
    assert code == 2, stderr  # partial success
    assert "line 11:" in stderr and "line 51:" in stderr and "user_id" in stderr
    assert "produced 100 record(s)" in stderr

    deserializer = AvroDeserializer(registry)  # writer schema from the registry
    received = consume_all(bootstrap, topic, len(sent), deserializer)
    assert len(received) == len(sent)
    by_id = {value["event_id"]: (key, value) for key, value in received}
    for record in sent:
        key, value = by_id[record["event_id"]]
        assert key == record["user_id"]
        assert as_millis(value) == record


def test_registry_api_as_confluent_client_sees_it(registry, schemas_dir):
    subject = f"py-api-{random.randrange(1 << 30)}-value"
    v1 = json.loads(load_schema(schemas_dir, "fixtures/impression.v1"))
    current = load_schema(schemas_dir, "impression")
    first_id = registry.register_schema(subject, Schema(json.dumps(v1), "AVRO"))
    second_id = registry.register_schema(subject, Schema(current, "AVRO"))
    assert first_id != second_id
    assert registry.get_versions(subject) == [1, 2]
    assert registry.lookup_schema(subject, Schema(current, "AVRO")).version == 2
    assert json.loads(registry.get_schema(first_id).schema_str) == v1

    # A field without a default breaks BACKWARD compatibility: Confluent's 409.
    breaking = json.loads(current)
    breaking["fields"].append({"name": "mandatory", "type": "long"})
    assert registry.test_compatibility(subject, Schema(json.dumps(breaking), "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema(subject, Schema(json.dumps(breaking), "AVRO"))
    assert refused.value.http_status_code == 409
    assert refused.value.error_code == 409

    registry.set_compatibility(subject_name=subject, level="NONE")
    assert registry.get_compatibility(subject_name=subject) == "NONE"
    assert registry.register_schema(subject, Schema(json.dumps(breaking), "AVRO")) > second_id

    assert registry.delete_version(subject, 3) == 3
    assert registry.get_versions(subject) == [1, 2]
    assert registry.delete_subject(subject) == [1, 2]
    assert registry.delete_subject(subject, permanent=True) == [1, 2, 3]
    with pytest.raises(SchemaRegistryError) as gone:
        registry.get_versions(subject)
    assert gone.value.error_code == 40401
