"""A third-party reader of registry mode: decodes every record of a topic with confluent-kafka's
AvroDeserializer and SchemaRegistryClient, nothing from the repository's schemas/.

Usage: read_with_registry.py BROKERS TOPIC REGISTRY_URL

Reads TOPIC from the beginning to its current end and prints one JSON line per record with a
value: {"key": ..., "schema_id": ..., "value": {...}} (datetimes as epoch milliseconds, bytes
as their length). Fails on any record it cannot decode.
"""
import datetime
import json
import struct
import sys
import uuid

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def plain(value):
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def main():
    brokers, topic, registry = sys.argv[1:4]
    # A deadline on each registry request (the client has none by default; retried 3 times).
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry, "timeout": 10}))
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"wxtest-registry-reader-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    ends = {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high > low:
            ends[p] = high
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    context = SerializationContext(topic, MessageField.VALUE)
    while ends:
        message = consumer.poll(10)
        if message is None:
            raise SystemExit(f"timed out with partitions {sorted(ends)} unread to their end")
        if message.error():
            raise SystemExit(f"read error: {message.error()}")
        if message.value() is not None:
            (schema_id,) = struct.unpack(">I", message.value()[1:5])
            print(json.dumps({
                "key": (message.key() or b"").decode(),
                "schema_id": schema_id,
                "value": plain(deserializer(message.value(), context)),
            }, ensure_ascii=False))
        if message.offset() + 1 >= ends.get(message.partition(), 0):
            ends.pop(message.partition(), None)
    consumer.close()


if __name__ == "__main__":
    main()
