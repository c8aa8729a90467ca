"""Decode wxstream records with fastavro, using nothing but the files in schemas/.

Usage: read_with_fastavro.py SCHEMAS_DIR FILE...
Each FILE holds one record in the Confluent wire format (magic byte 0, 4-byte big-endian schema
id, Avro binary datum). Prints one JSON object per file: {"file", "schema_id", "subject",
"record"}, with bytes fields as base64 text.
"""
import base64
import io
import json
import struct
import sys
from pathlib import Path

import fastavro


def jsonable(value):
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if hasattr(value, "isoformat"):  # timestamp-millis as datetime: back to epoch ms
        return int(value.timestamp() * 1000)
    return value


def main():
    schemas = Path(sys.argv[1])
    table = json.loads((schemas / "ids.json").read_text())["schemas"]
    by_id = {e["id"]: e for e in table}
    for name in sys.argv[2:]:
        data = Path(name).read_bytes()
        magic, schema_id = struct.unpack(">bI", data[:5])
        if magic != 0:
            raise SystemExit(f"{name}: magic byte {magic}, expected 0")
        entry = by_id[schema_id]
        schema = fastavro.parse_schema(json.loads((schemas / entry["file"]).read_text()))
        body = io.BytesIO(data[5:])
        record = fastavro.schemaless_reader(body, schema)
        if body.read():
            raise SystemExit(f"{name}: trailing bytes after the datum")
        print(json.dumps({"file": Path(name).name, "schema_id": schema_id,
                          "subject": entry["subject"], "record": jsonable(record)},
                         ensure_ascii=False))


if __name__ == "__main__":
    main()
