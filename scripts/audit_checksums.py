#!/usr/bin/env python3
"""Recompute AllSource's hash chains from a plain SELECT, without AllSource's code.

Reads events through psql (any psql connection options are passed through),
recomputes every checksum with Python's hashlib from the encoding documented
in the README, and compares. Exits 0 when every stream's chain holds, 1 otherwise.

    scripts/audit_checksums.py -h localhost -p 54320 -U postgres -d allsource
    scripts/audit_checksums.py --stream order-1 -d allsource
"""
import argparse
import hashlib
import json
import struct
import subprocess
import sys
import uuid

QUERY = """
SELECT json_build_object(
    'stream_id', e.stream_id, 'version', e.version, 'event_type', e.event_type,
    'event_id', e.event_id, 'payload', e.payload::text, 'metadata', e.metadata::text,
    'payload_digest', encode(x.payload_digest, 'hex'),
    'metadata_digest', encode(x.metadata_digest, 'hex'),
    'created_at', (extract(epoch FROM e.created_at) * 1000000)::bigint,
    'checksum', encode(e.checksum, 'hex'))
FROM allsource.events e
LEFT JOIN allsource.erased_events x ON x.partition_id = e.partition_id AND x.position = e.position
{where} ORDER BY e.stream_id, e.version
"""


def length_prefixed(text):
    data = text.encode("utf-8")
    return struct.pack(">I", len(data)) + data


def encoding(event):
    """The documented encoding, format 1."""
    out = bytes([1])
    out += length_prefixed(event["stream_id"])
    out += struct.pack(">q", event["version"])
    out += length_prefixed(event["event_type"])
    out += uuid.UUID(event["event_id"]).bytes
    # A hard delete erased the text and kept its digests.
    if event["payload_digest"] is not None:
        out += bytes.fromhex(event["payload_digest"])
        metadata = event["metadata_digest"] and bytes.fromhex(event["metadata_digest"])
    else:
        out += hashlib.sha256(event["payload"].encode("utf-8")).digest()
        metadata = event["metadata"] and hashlib.sha256(event["metadata"].encode("utf-8")).digest()
    if metadata is None:
        out += b"\x00"
    else:
        out += b"\x01" + metadata
    out += struct.pack(">q", event["created_at"])
    return out


def main():
    # No -h: that is psql's --host.
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument("--stream", help="audit this stream only")
    args, psql_options = parser.parse_known_args()
    where = ""
    if args.stream is not None:
        where = "WHERE stream_id = '" + args.stream.replace("'", "''") + "'"
    rows = subprocess.run(
        ["psql", "--no-psqlrc", "--tuples-only", "--no-align", "--quiet", "-v", "ON_ERROR_STOP=1",
         *psql_options, "-c", QUERY.format(where=where)],
        check=True, capture_output=True, text=True,
    ).stdout.splitlines()

    streams, events, bad = 0, 0, []
    current, previous = None, bytes(32)
    for line in rows:
        event = json.loads(line)
        if event["stream_id"] != current:
            current, previous, streams = event["stream_id"], bytes(32), streams + 1
        events += 1
        expected = hashlib.sha256(encoding(event) + previous).hexdigest()
        if expected != event["checksum"]:
            bad.append((event["stream_id"], event["version"]))
        previous = bytes.fromhex(event["checksum"])
    for stream_id, version in bad:
        print(f"MISMATCH stream {stream_id!r} version {version}")
    print(f"{events} events in {streams} streams checked, {len(bad)} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
