#!/usr/bin/env python3
"""Reconciles a pipeline run with the WeCom simulator's ground truth, on its own (it reads the
topics with schemas/ only, MySQL with the mysql client, the search index and the bucket over
HTTP, never wxstream's code):

- every served seq is in the raw topic;
- the clean msgids are the served messages minus the poison, and the poison is parked;
- MySQL rows = search documents = distinct clean msgids;
- the 1-minute windows of the stats topic add up to the distinct clean msgids (switch records
  excluded) minus those parked as late;
- every media item of the clean messages is an object with the simulator's size and MD5 and a
  `stored` row, or a `parked` row for a file the simulator says expired; the bucket holds exactly
  the stored objects under the key prefix and no unfinished upload.

Used by scripts/demo and by tests/tests/helm_chart.rs. Exits 0 and prints RECONCILED when all
hold; with --wait it checks again until they do or the time is up.

  reconcile.py --prefix P --brokers B --sim-url URL --database DB --index-url URL \
      --s3-endpoint URL --bucket B --key-prefix K [--wait SECONDS]
"""
import argparse
import io
import json
import os
import subprocess
import sys
import time
import urllib.request

import boto3
import fastavro
from confluent_kafka import Consumer, TopicPartition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix", required=True, help="the run's topic prefix")
    p.add_argument("--brokers", required=True)
    p.add_argument("--sim-url", required=True, help="the simulator, e.g. http://127.0.0.1:8480")
    p.add_argument("--database", required=True)
    p.add_argument("--mysql-host", default="127.0.0.1")
    p.add_argument("--mysql-port", default="3306")
    p.add_argument("--mysql-user", default="wxstream")
    p.add_argument("--mysql-password", default="wxstream")
    p.add_argument("--index-url", required=True, help="the search alias, e.g. http://127.0.0.1:9200/wxstream-messages")
    p.add_argument("--s3-endpoint", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--key-prefix", default="")
    p.add_argument("--wait", type=float, default=0, help="seconds to keep checking until reconciled")
    p.add_argument("--stats-wait", type=float, default=150,
                   help="seconds to wait for the last 1-minute windows to close (wall-clock idle time)")
    p.add_argument("--media-wait", type=float, default=180)
    return p.parse_args()


class Topics:
    def __init__(self, brokers, prefix):
        self.prefix = prefix
        self.consumer = Consumer({"bootstrap.servers": brokers, "group.id": "wxstream-reconcile",
                                  "enable.auto.commit": False})

    def records(self, name, schema_file):
        """Every (key, decoded value or None) of a topic, using only schemas/."""
        c = self.consumer
        topic = self.prefix + name
        schema = fastavro.parse_schema(json.load(open(os.path.join(ROOT, "schemas", schema_file))))
        for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            c.assign([TopicPartition(topic, p, low)])
            while True:
                m = c.poll(5)
                if m is None:
                    break
                value = m.value()
                yield m.key(), (fastavro.schemaless_reader(io.BytesIO(value[5:]), schema) if value else None)
                if m.offset() + 1 >= high:
                    break


def mysql(args, sql):
    return subprocess.run(["mysql", f"-h{args.mysql_host}", f"-P{args.mysql_port}", f"-u{args.mysql_user}",
                           f"-p{args.mysql_password}", "-N", "-B", "-e", sql],
                          capture_output=True, text=True, check=True).stdout


def media_items(m):
    """The (item, sdkfileid) of a clean message, read from its payload as WeCom documents it."""
    try:
        payload = json.loads(m["payload_json"])
    except ValueError:
        return []
    if m["msgtype"] in ("mixed", "chatrecord"):
        out = []
        for i, entry in enumerate(payload.get("item", [])):
            try:
                content = json.loads(entry.get("content", ""))
            except ValueError:
                continue
            if isinstance(content, dict) and content.get("sdkfileid"):
                out.append((i, content["sdkfileid"]))
        return out
    return [(0, payload["sdkfileid"])] if isinstance(payload, dict) and payload.get("sdkfileid") else []


def check(args, topics, final):
    """One pass; returns whether everything reconciled. `final` prints every line; otherwise only
    the messages and stores part is printed, as progress."""
    say = print if final else (lambda *a, **k: None)
    truth = json.load(urllib.request.urlopen(args.sim_url + "/sim/ground_truth", timeout=30))["corps"]
    seqs, callbacks, raw = {}, 0, 0
    for _, batch in topics.records("wxstream.raw", "raw_batch.avsc"):
        raw += 1
        if batch["source"] == "CALLBACK":
            callbacks += 1
        for item in batch["items"]:
            seqs.setdefault(batch["corp_id"], set()).add(item["seq"])
    clean, clean_records, countable, messages = {}, 0, set(), {}
    for _, m in topics.records("wxstream.clean", "clean_message.avsc"):
        clean_records += 1
        messages[(m["corp_id"], m["msgid"])] = m
        clean.setdefault(m["corp_id"], set()).add(m["msgid"])
        if m["action"] != "switch":
            countable.add((m["corp_id"], m["msgid"]))
    parked = {}
    for key, d in topics.records("wxstream.dead-letter", "dead_letter.avsc"):
        parked[key] = d
    dead, classes = {}, {}
    for d in parked.values():
        if d is not None and d["stage"] == "decrypt":
            dead.setdefault(d["corp_id"], set()).add(d["msgid"])
        if d is not None:
            label = d["stage"] + ":" + d["error_class"]
            classes[label] = classes.get(label, 0) + 1
    lines = [f"{'corp':<8} {'served':>7} {'in raw':>7} {'poison':>7} {'clean':>7} {'parked':>7}  result"]
    ok = True
    for corp in truth:
        cid = corp["corp_id"]
        served = set(corp["served_seqs"])
        msgs = [m for m in corp["messages"] if m["seq"] in served]
        poison = {m["msgid"] for m in msgs if m["poison"]}
        good = {m["msgid"] for m in msgs if not m["poison"]}
        stored = seqs.get(cid, set())
        got_clean = {i for i in clean.get(cid, set()) if not i.startswith("callback:")}
        got_dead = dead.get(cid, set())
        # Everything the simulator holds must have been served, too.
        fine = len(served) == len(corp["messages"]) and served <= stored and got_clean == good and got_dead == poison
        ok &= fine
        lines.append(f"{cid:<8} {len(served):>7} {len(stored & served):>7} {len(poison):>7} {len(got_clean):>7} "
                     f"{len(got_dead):>7}  {'ok' if fine else 'MISMATCH'}")
    lines.append(f"raw topic: {raw} records ({callbacks} signed callbacks); clean topic: {clean_records} records "
                 f"(duplicates of a msgid are absorbed downstream); parked by class: {classes}")
    distinct = sum(len(v) for v in clean.values())
    rows = int(mysql(args, f"SELECT COUNT(*) FROM `{args.database}`.messages").strip() or 0)
    urllib.request.urlopen(urllib.request.Request(args.index_url + "/_refresh", method="POST"), timeout=30)
    docs = json.load(urllib.request.urlopen(args.index_url + "/_count", timeout=30))["count"]
    stores_ok = rows == docs == distinct
    ok &= stores_ok
    lines.append(f"stores: {distinct} distinct clean msgids, {rows} MySQL rows ({args.database}.messages), "
                 f"{docs} search documents ({args.index_url.rsplit('/', 1)[1]}): {'ok' if stores_ok else 'MISMATCH'}")
    if not ok:
        if final:
            print("\n".join(lines))
        else:
            print("  " + lines[-1], flush=True)
        return False
    print("\n".join(lines), flush=True)

    # Stats: the latest 1-minute window of every group (what the compacted topic keeps) adds up
    # to the distinct clean msgids, switch records excluded, minus events parked as late. The
    # last windows close on wall-clock time (1 min + grace after the input stopped).
    deadline = time.time() + args.stats_wait
    while True:
        latest = {}
        for key, w in topics.records("wxstream.stats", "group_window_count.avsc"):
            latest[key] = w
        minute = [w for w in latest.values() if w and w["window_size_ms"] == 60000]
        counted = sum(w["total"] for w in minute)
        late = {(d["corp_id"], d["msgid"]) for d in parked.values() if d is not None and d["stage"] == "stats"}
        if counted + len(late & countable) == len(countable) or time.time() > deadline:
            break
        print(f"  stats: {counted + len(late & countable)} of {len(countable)} messages in closed 1-minute windows; "
              "waiting for the last windows to close", flush=True)
        time.sleep(5)
    stats_ok = counted + len(late & countable) == len(countable)
    ok &= stats_ok
    hours = sum(1 for w in latest.values() if w and w["window_size_ms"] == 3600000)
    print(f"stats: {len(latest)} window keys ({len(minute)} of 1 minute, {hours} of 1 hour); "
          f"1-minute totals {counted} + {len(late & countable)} parked late = {len(countable)} distinct clean msgids "
          f"(switch records excluded): {'ok' if stats_ok else 'MISMATCH'}", flush=True)

    # Media: every media item of the clean messages (read from the payloads above) is an object
    # with the simulator's size and a `stored` row with its MD5, or, for a file the simulator
    # says expired, a `parked` row; the bucket holds exactly the stored objects and no
    # unfinished upload.
    files = {f["sdkfileid"]: f for corp in truth for f in corp.get("media", [])}
    expected = {(corp, msgid, i): fid for (corp, msgid), m in messages.items() for i, fid in media_items(m)}

    def media_rows():
        out = mysql(args, "SELECT corp_id, msgid, item, status, IFNULL(md5, ''), IFNULL(size, -1), object_key "
                          f"FROM `{args.database}`.media")
        return {(c, msg, int(i)): (st, md5, int(size), key)
                for c, msg, i, st, md5, size, key in (line.split("\t") for line in out.splitlines() if line)}

    deadline = time.time() + args.media_wait
    while True:
        rows = media_rows()
        terminal = sum(1 for k in expected if rows.get(k, ("",))[0] in ("stored", "parked"))
        if terminal == len(expected) or time.time() > deadline:
            break
        print(f"  media: {terminal} of {len(expected)} items stored or parked; waiting", flush=True)
        time.sleep(5)
    s3 = boto3.client("s3", endpoint_url=args.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=os.environ["WX_S3_ACCESS_KEY_ID"],
                      aws_secret_access_key=os.environ["WX_S3_SECRET_ACCESS_KEY"])
    objects = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=args.key_prefix):
        for o in page.get("Contents", []):
            objects[o["Key"]] = o["Size"]
    # The bucket's uploads, filtered here: MinIO answers a Prefix that is not a whole key with none.
    unfinished = sum(1 for p in s3.get_paginator("list_multipart_uploads").paginate(Bucket=args.bucket)
                     for u in p.get("Uploads", []) if u["Key"].startswith(args.key_prefix))
    stored = parked_media = wrong = 0
    for k, fid in expected.items():
        f, row = files.get(fid), rows.get(k)
        if f is None or row is None:
            wrong += 1
        elif f["expired"]:
            parked_media += row[0] == "parked"
            wrong += row[0] != "parked"
        elif row[0] == "stored" and row[1] == f["md5"] and objects.get(row[3]) == f["size"]:
            stored += 1
        else:
            wrong += 1
    media_ok = wrong == 0 and unfinished == 0 and len(objects) == stored
    ok &= media_ok
    print(f"media: {len(expected)} items in the clean messages: {stored} objects with the simulator's size and MD5 "
          f"({sum(objects.values()) / 1048576:.0f} MB in bucket {args.bucket} under {args.key_prefix or '/'}), "
          f"{parked_media} expired files parked, {wrong} wrong, {len(objects)} objects in all, "
          f"{unfinished} unfinished uploads: {'ok' if media_ok else 'MISMATCH'}", flush=True)
    return ok


def main():
    args = parse_args()
    topics = Topics(args.brokers, args.prefix)
    deadline = time.time() + args.wait
    while True:
        final = time.time() >= deadline
        try:
            reconciled = check(args, topics, final)
        except (OSError, subprocess.CalledProcessError, KeyError) as e:
            # A store, the broker or the simulator not answering yet (or a topic not created
            # yet) is worth waiting for, until the time is up.
            if final:
                raise
            print(f"  not ready to reconcile yet: {type(e).__name__}: {e}", flush=True)
            reconciled = False
        if reconciled:
            print("RECONCILED: served = in raw; clean = served - poison; parked = poison; rows = documents = clean "
                  "msgids; 1-minute windows = clean msgids; media = stored with the right MD5 or parked as expired")
            return 0
        if final:
            print("NOT RECONCILED")
            return 1
        time.sleep(3)


if __name__ == "__main__":
    sys.exit(main())
