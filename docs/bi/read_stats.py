"""Read wxstream's stats topic the way a BI loader does, with nothing but schemas/.

Usage: read_stats.py --brokers HOST:PORT [--topic wxstream.stats]
                     [--format avro|json|connect_json] [--schemas DIR] [--registry URL]
                     [--group GROUP]

Reads the compacted stats topic from the beginning to its current end and prints, as JSON lines,
the latest record of every key (corp_id/group_id/window_size_ms/window_start): what compaction
keeps, and what a table upserted by that key holds; each record carries its key as
`window_key`. Avro records are in the Confluent wire
format (magic byte 0, 4-byte schema id, Avro binary); the id is looked up in schemas/ids.json,
or in the Confluent-compatible Schema Registry given with --registry (then nothing of schemas/
is used; each registry request has a 10 s deadline and is retried 3 times). JSON records are
the same fields as JSON; connect_json records are Kafka Connect's envelope
({"schema": ..., "payload": ...}) whose payload is those fields. Timestamps are printed as epoch
milliseconds in every format.
Needs confluent-kafka and fastavro (pip install confluent-kafka fastavro; with --registry also
what confluent_kafka.schema_registry needs: pip install "confluent-kafka[schemaregistry]").
"""
import argparse
import io
import json
import struct
import sys
import uuid
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, TopicPartition

REGISTRY_TIMEOUT_S = 10


def avro_decoder(schemas_dir):
    table = json.loads((schemas_dir / "ids.json").read_text())["schemas"]
    parsed = {}
    for entry in table:
        schema = json.loads((schemas_dir / entry["file"]).read_text())
        parsed[entry["id"]] = fastavro.parse_schema(schema)

    def decode(value):
        magic, schema_id = struct.unpack(">bI", value[:5])
        if magic != 0:
            raise ValueError(f"magic byte {magic}, expected 0")
        if schema_id not in parsed:
            raise ValueError(f"schema id {schema_id} is not in schemas/ids.json")
        return with_epoch_ms(fastavro.schemaless_reader(io.BytesIO(value[5:]), parsed[schema_id]))

    return decode


def registry_decoder(url):
    """Avro through a registry: the id of each record resolved there (cached by the client)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    # Each request to the registry has a deadline: the client's default is none, and a request
    # the registry never answers held a reader for good. A timed-out request is retried (the
    # client's max.retries, 3) and then fails the reader with its cause.
    client = SchemaRegistryClient({"url": url, "timeout": REGISTRY_TIMEOUT_S})
    deserializer = AvroDeserializer(client)

    def decode(value, topic):
        return with_epoch_ms(deserializer(value, SerializationContext(topic, MessageField.VALUE)))

    return decode


def with_epoch_ms(record):
    for field in ("window_start", "window_end", "emitted_at"):
        if hasattr(record[field], "timestamp"):  # timestamp-millis arrives as datetime
            record[field] = int(record[field].timestamp() * 1000)
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", default="wxstream.stats")
    parser.add_argument("--format", choices=["avro", "json", "connect_json"], default="avro")
    parser.add_argument("--schemas", default=str(Path(__file__).resolve().parents[2] / "schemas"))
    parser.add_argument("--registry", help="a Confluent-compatible Schema Registry URL (Avro)")
    parser.add_argument("--group", default=f"wxstream-bi-reader-{uuid.uuid4()}")
    args = parser.parse_args()
    if args.registry and args.format != "avro":
        parser.error("--registry decodes Avro only: drop it, or use --format avro")
    if args.format == "avro" and args.registry:
        by_registry = registry_decoder(args.registry)
        decode = lambda value: by_registry(value, args.topic)  # noqa: E731
    elif args.format == "avro":
        decode = avro_decoder(Path(args.schemas))
    elif args.format == "connect_json":
        decode = lambda value: json.loads(value)["payload"]  # noqa: E731
    else:
        decode = json.loads

    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    metadata = consumer.list_topics(args.topic, timeout=10)
    partitions = sorted(metadata.topics[args.topic].partitions)
    ends = {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, p), timeout=10)
        if high > low:
            ends[p] = high
    consumer.assign([TopicPartition(args.topic, p, 0) for p in ends])
    latest = {}
    while ends:
        message = consumer.poll(10)
        if message is None:
            raise SystemExit(f"timed out with partitions {sorted(ends)} unread to their end")
        if message.error():
            raise SystemExit(f"read error: {message.error()}")
        key = message.key().decode()
        if message.value() is None:
            latest.pop(key, None)  # a tombstone deletes the key
        else:
            record = decode(message.value())
            record["window_key"] = key
            latest[key] = record
        if message.offset() + 1 >= ends.get(message.partition(), 0):
            ends.pop(message.partition(), None)
    consumer.close()
    for key in sorted(latest):
        print(json.dumps(latest[key], ensure_ascii=False))
    print(f"{len(latest)} window keys", file=sys.stderr)


if __name__ == "__main__":
    main()
