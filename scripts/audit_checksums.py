#!/usr/bin/env python3
"""Recompute AllSource's hash chains from a plain SELECT, without AllSource's code.

Reads stream rows and events through psql (any psql connection options are passed
through), recomputes every checksum and tombstone with Python's hashlib from the
encoding documented in docs/integrity.md (formats 1 and 2), checks what the chain does not
say (versions 1..n, positions rising, the stream row's version, last checksum and
tenant, erased digests only where a hard delete erased the content), and compares.
Exits 0 when every stream holds, 1 otherwise. Sees every tenant: run it as a role
that may read every row (a superuser or the extension's owner).

    scripts/audit_checksums.py -h localhost -p 54320 -U postgres -d allsource
    scripts/audit_checksums.py --stream order-1 -d allsource
    scripts/audit_checksums.py --self-test      # the test vectors of docs/integrity.md
"""
import argparse
import hashlib
import json
import struct
import subprocess
import sys
import uuid

# One line per stream row, then its events; events without a stream row last.
QUERY = """
SELECT json_build_object('kind', 'stream', 'stream_id', s.stream_id, 'version', s.version,
    'tenant_id', s.tenant_id, 'last_checksum', encode(s.last_checksum, 'hex'),
    'deleted_at', (extract(epoch FROM s.deleted_at) * 1000000)::bigint, 'deleted_by', s.deleted_by,
    'erased', s.erased_at IS NOT NULL, 'tombstone_checksum', encode(s.tombstone_checksum, 'hex'))
FROM allsource.streams s {where_streams}
UNION ALL
SELECT json_build_object('kind', 'event',
    'stream_id', e.stream_id, 'version', e.version, 'position', e.position, 'event_type', e.event_type,
    'event_id', e.event_id, 'tenant_id', e.tenant_id, 'tags', e.tags, 'payload', e.payload::text, 'metadata', e.metadata::text,
    'payload_digest', encode(x.payload_digest, 'hex'),
    'metadata_digest', encode(x.metadata_digest, 'hex'),
    'created_at', (extract(epoch FROM e.created_at) * 1000000)::bigint,
    'checksum', encode(e.checksum, 'hex'))
FROM allsource.events e
LEFT JOIN allsource.erased_events x ON x.partition_id = e.partition_id AND x.position = e.position
{where_events}
"""

GENESIS = bytes(32)


def length_prefixed(text):
    data = text.encode("utf-8")
    return struct.pack(">I", len(data)) + data


def optional_text(text):
    return b"\x00" if text is None else b"\x01" + length_prefixed(text)


def sha256(data):
    return hashlib.sha256(data).digest()


def encoding(event, fmt):
    """The documented encoding of an event, format 1 or 2."""
    out = bytes([fmt])
    out += length_prefixed(event["stream_id"])
    out += struct.pack(">q", event["version"])
    out += length_prefixed(event["event_type"])
    out += uuid.UUID(event["event_id"]).bytes
    # A hard delete erased the text and kept its digests.
    if event.get("payload_digest") is not None:
        out += bytes.fromhex(event["payload_digest"])
        metadata = event["metadata_digest"] and bytes.fromhex(event["metadata_digest"])
    else:
        out += sha256(event["payload"].encode("utf-8"))
        metadata = event["metadata"] and sha256(event["metadata"].encode("utf-8"))
    out += b"\x00" if metadata is None else b"\x01" + metadata
    out += struct.pack(">q", event["created_at"])
    if fmt == 2:
        out += optional_text(event["tenant_id"])
        tags = event.get("tags") or []
        out += b"\x00" if not tags else b"\x01" + struct.pack(">I", len(tags)) + b"".join(
            length_prefixed(tag) for tag in tags)
    return out


def link(event, previous):
    """The event's checksum if it is its chain link after `previous` (either format)."""
    for fmt in (2, 1):
        candidate = sha256(encoding(event, fmt) + previous)
        if candidate.hex() == event["checksum"]:
            return candidate
    return None


def tombstone(stream, previous):
    """The documented tombstone link of a deleted stream."""
    out = b"\x80" + length_prefixed(stream["stream_id"]) + struct.pack(">q", stream["version"])
    out += optional_text(stream["tenant_id"])
    out += struct.pack(">q", stream["deleted_at"])
    out += optional_text(stream["deleted_by"])
    return sha256(out + previous)


def audit_stream(stream_id, row, events):
    """The first problem of one stream, as (version or None, text), or None."""
    previous, position = GENESIS, None
    for expected, event in enumerate(events, start=1):
        v = event["version"]
        if v != expected:
            return expected, f"version {expected} is missing or repeated"
        if position is not None and event["position"] <= position:
            return v, f"version {v}'s position is not after version {v - 1}'s"
        if row is None:
            return 1, "events exist but the stream row is missing"
        if event["tenant_id"] != row["tenant_id"]:
            return v, f"version {v} is of another tenant than its stream row"
        if event["payload_digest"] is not None:
            erased = row["erased"] and row["deleted_at"] is not None
            if not erased or event["payload"] != "null" or event["metadata"] is not None:
                return v, f"version {v} has erased digests but its content was not erased"
        checked = link(event, previous)
        if checked is None:
            return v, f"checksum mismatch at version {v}"
        previous, position = checked, event["position"]
    if row is None:
        return None
    last = len(events)
    if row["version"] != last:
        return min(row["version"], last) + 1, f"the stream row says version {row['version']}, the events end at {last}"
    if (row["last_checksum"] or None) != (previous.hex() if last else None):
        return max(last, 1), "the stream row's last checksum does not match its last event"
    deleted, sealed = row["deleted_at"] is not None, row["tombstone_checksum"]
    if deleted and (sealed is None or tombstone(row, previous).hex() != sealed):
        return None, "the tombstone does not match the stream row"
    if not deleted and (sealed is not None or row["erased"]):
        return None, "a tombstone checksum or erasure without a deletion: a deleted stream came back"
    return None


def self_test():
    """The test vectors of docs/integrity.md."""
    event = {"stream_id": "order-1", "version": 1, "event_type": "OrderPlaced",
             "event_id": "00112233-4455-6677-8899-aabbccddeeff", "payload": '{"total": 42}',
             "metadata": None, "payload_digest": None, "created_at": 1767225600000000, "tenant_id": None}
    expected = {
        (1, None): "205e6ad34393386b772f1c2bed4f777b9309d9093d5ca47f74a5299f50659aa7",
        (2, None): "96dc918ec4350f56ee0cf65a1a9f0239719ee5d096d6b7dd410d0a2a5207f451",
        (2, "acme"): "8ed1d4ea6ae0c21d0cd8b4a895ea41a2185830b01d585104ed8d09058cee8982",
    }
    for (fmt, tenant), checksum in expected.items():
        got = sha256(encoding(dict(event, tenant_id=tenant), fmt) + GENESIS).hex()
        assert got == checksum, (fmt, tenant, got)
    tagged = dict(event, tenant_id="acme", tags=["course:7", "student:42"])
    got = sha256(encoding(tagged, 2) + GENESIS).hex()
    assert got == "2f68ba0cd87e4b3f9a176afff3ebc8b76dded24f7e6fc4d193fd78e24434cfa5", got
    stream = {"stream_id": "order-1", "version": 1, "tenant_id": "acme",
              "deleted_at": 1767229200000000, "deleted_by": "app"}
    got = tombstone(stream, bytes.fromhex(expected[(2, "acme")])).hex()
    assert got == "4930955b5779f9fd2f9d021fa2b0a9cc90d3882b90b537cd6d534e1fd93cc147", got
    print("test vectors: ok")


def main():
    # No -h: that is psql's --host.
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument("--stream", help="audit this stream only")
    parser.add_argument("--self-test", action="store_true", help="check the test vectors of docs/integrity.md")
    args, psql_options = parser.parse_known_args()
    if args.self_test:
        self_test()
        return 0
    where_streams = where_events = ""
    if args.stream is not None:
        quoted = "'" + args.stream.replace("'", "''") + "'"
        where_streams = f"WHERE s.stream_id = {quoted}"
        where_events = f"WHERE e.stream_id = {quoted}"
    lines = subprocess.run(
        ["psql", "--no-psqlrc", "--tuples-only", "--no-align", "--quiet", "-v", "ON_ERROR_STOP=1",
         *psql_options, "-c", QUERY.format(where_streams=where_streams, where_events=where_events)],
        check=True, capture_output=True, text=True,
    ).stdout.splitlines()

    rows, events = {}, {}
    for line in lines:
        item = json.loads(line)
        if item["kind"] == "stream":
            rows[item["stream_id"]] = item
        else:
            events.setdefault(item["stream_id"], []).append(item)
    bad = []
    for stream_id in sorted(set(rows) | set(events)):
        stream_events = sorted(events.get(stream_id, []), key=lambda e: e["version"])
        problem = audit_stream(stream_id, rows.get(stream_id), stream_events)
        if problem is not None:
            bad.append((stream_id, *problem))
    for stream_id, version, problem in bad:
        print(f"MISMATCH stream {stream_id!r} version {version}: {problem}")
    count = sum(len(e) for e in events.values())
    print(f"{count} events in {len(set(rows) | set(events))} streams checked, {len(bad)} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
