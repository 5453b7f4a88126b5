#!/usr/bin/env python3
"""Conditional appends (DCB): AllSource against eventsourcing's PostgreSQL recorder.

Run by benches/dcb.sh, which sets up the cluster, the database and the venv
(benches/dcb-requirements.txt). Both systems get the same server, the same
database, psycopg 3, autocommit connections (one per client) and the same
decisions:

  * a client's decision appends one event of ~200 bytes (the benchmarks'
    payload) with 2 tags, on the condition that no event carrying either tag
    (a query of two items, one tag each) was appended after the client's last
    known head;
  * disjoint: both tags are the client's own (`acct:<run>-<client>` and
    `acct:<run>-<client>-<n mod 100>`); nobody else writes them, so the last
    known head is the position of the client's own previous append;
  * overlap: a share of the decisions (10%) uses the client's own tag and one
    tag shared by all clients (`shared:<run>`). Those decisions first read
    what they decide on, as a real decision does: the head and the matching
    events after the last known position (AllSource: `query_head` then
    `read_query`; eventsourcing: `recorder.read`, which returns its head), and
    append with after = that head;
  * a conflict (AllSource ZA004, eventsourcing IntegrityError) is counted, the
    head and the events are read again the same way, and the append retried.

Why the head of an overlapping decision is read and not carried over: in
AllSource positions are taken before commit, so a position smaller than the
client's own last one may still commit later (the watermark, query_head, is
the position below which everything is visible); eventsourcing takes an
exclusive table lock for each conditional append, so its ids commit in order
and its max(id) is always a safe head. Reading the head costs both the same
two statements.

PostgreSQL's own ceiling beside them, with disjoint boundaries: the same
event as one plain INSERT into a table shaped like eventsourcing's main table
(no condition, no tag rows), through the same clients.

Also, AllSource alone: append_if with a condition against append_batch of
the same events (each into a new stream, as append_if without stream_id
does) and append_if without a condition; then read_query of one tag over
1,000,000 events (and eventsourcing's read of one tag over as many of its
own), p50/p99.

Each client makes one decision before the clock starts (so its statements
are prepared and planned, as on a long-lived connection); a run lasts a
fixed time and counts the decisions committed within it, then checks that the
store holds as many events as the clients appended.

Clients are threads with a connection each, spread over up to 8 processes
(spawned): the client CPU of each run is measured (process_time of every
client process) and printed beside the machine's busy cores (/proc/stat), so
a client-bound run shows.
"""

import argparse
import gc
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import threading
import time
import traceback

import psycopg

PAYLOAD = os.environ.get(
    "BENCH_PAYLOAD",
    '{"sku": "SKU-12345", "qty": 3, "price": 19.99, "currency": "EUR", "warehouse": "north-7", '
    '"note": "a two hundred byte payload, roughly what an order line event carries in practice, padded to size...."}',
)
EVENT_TYPE = "Decided"
ES_TABLE = "es_dcb"  # eventsourcing's tables: es_dcb_tt_main, es_dcb_tt_tag (schema public)
PLAIN_TABLE = "dcb_plain"  # the plain INSERT's table (schema public)
MAX_PROCESSES = 8


def conninfo(args):
    return f"host={args.host} port={args.port} dbname={args.dbname} user={args.user}"


def es_datastore(args, pool_size):
    from eventsourcing.postgres import PostgresDatastore

    return PostgresDatastore(
        dbname=args.dbname,
        host=args.host,
        port=args.port,
        user=args.user,
        password="",
        pool_size=pool_size,
        schema="public",
    )


def es_recorder(datastore):
    from eventsourcing.dcb.postgres_tt import PostgresDCBRecorderTT

    return PostgresDCBRecorderTT(datastore, events_table_name=ES_TABLE)


class Conflict(Exception):
    pass


# ---------------------------------------------------------------- clients
class AllSourceClient:
    """One connection; the decision's statements as an application sends them."""

    def __init__(self, args, mode):
        self.conn = psycopg.connect(conninfo(args), autocommit=True)
        self.cur = self.conn.cursor()
        self.mode = mode

    @staticmethod
    def _query(tags):
        return json.dumps([{"tags": [t]} for t in tags])

    @staticmethod
    def _events(tags):
        return '[{"type": "%s", "payload": %s, "tags": %s}]' % (EVENT_TYPE, PAYLOAD, json.dumps(tags))

    def refresh(self, tags, known):
        q = self._query(tags)
        self.cur.execute("SELECT allsource.query_head(%s::jsonb)", (q,), prepare=True)
        head = self.cur.fetchone()[0]
        self.cur.execute("SELECT * FROM allsource.read_query(%s::jsonb, %s, 1000)", (q, known), prepare=True)
        self.cur.fetchall()
        return head

    def append(self, tags, after, stream):
        events = self._events(tags)
        try:
            if self.mode == "cond":
                self.cur.execute(
                    "SELECT last_position FROM allsource.append_if(%s::jsonb, %s::jsonb, %s)",
                    (events, self._query(tags), after),
                    prepare=True,
                )
            elif self.mode == "nocond":
                self.cur.execute("SELECT last_position FROM allsource.append_if(%s::jsonb)", (events,), prepare=True)
            elif self.mode == "batch":
                self.cur.execute(
                    "SELECT last_position FROM allsource.append_batch(%s, %s::jsonb)", (stream, events), prepare=True
                )
            else:
                raise ValueError(self.mode)
        except psycopg.Error as e:
            if e.sqlstate == "ZA004":
                raise Conflict() from e
            raise
        return self.cur.fetchone()[0]

    def close(self):
        self.conn.close()


class EventsourcingClient:
    """eventsourcing's PostgresDCBRecorderTT, used directly (no application layer)."""

    def __init__(self, recorder):
        from eventsourcing.dcb.api import DCBAppendCondition, DCBEvent, DCBQuery, DCBQueryItem
        from eventsourcing.persistence import IntegrityError

        self.recorder = recorder
        self.DCBAppendCondition, self.DCBEvent, self.DCBQuery, self.DCBQueryItem = (
            DCBAppendCondition,
            DCBEvent,
            DCBQuery,
            DCBQueryItem,
        )
        self.IntegrityError = IntegrityError
        self.data = PAYLOAD.encode()

    def _query(self, tags):
        return self.DCBQuery(items=[self.DCBQueryItem(tags=[t]) for t in tags])

    def refresh(self, tags, known):
        response = self.recorder.read(self._query(tags), after=known)
        for _ in response:
            pass
        return response.head or 0

    def append(self, tags, after, stream):
        event = self.DCBEvent(type=EVENT_TYPE, data=self.data, tags=list(tags))
        condition = self.DCBAppendCondition(fail_if_events_match=self._query(tags), after=after)
        try:
            return self.recorder.append([event], condition)
        except self.IntegrityError as e:
            raise Conflict() from e

    def close(self):
        pass


class PlainInsertClient:
    """PostgreSQL's own ceiling for the same decisions: one plain INSERT of
    the event (no condition, no check, no tag rows) into a table shaped like
    eventsourcing's main table, committed alone."""

    def __init__(self, args):
        self.conn = psycopg.connect(conninfo(args), autocommit=True)
        self.cur = self.conn.cursor()
        self.data = PAYLOAD.encode()

    def refresh(self, tags, known):
        return known

    def append(self, tags, after, stream):
        self.cur.execute(
            f"INSERT INTO public.{PLAIN_TABLE} (type, data, tags) VALUES (%s, %s, %s) RETURNING id",
            (EVENT_TYPE, self.data, list(tags)),
            prepare=True,
        )
        return self.cur.fetchone()[0]

    def close(self):
        self.conn.close()


# ---------------------------------------------------------------- the loop
def own_tag(run, client):
    return f"acct:{run}-{client}"


def first_head(client, run, c, overlap):
    """The head a client starts from (its tags are new: no events to read)."""
    return client.refresh([own_tag(run, c), f"shared:{run}"] if overlap else [own_tag(run, c)], 0)


def client_loop(client, run, c, overlap, known, start, end, out):
    """Decisions until `end`; counts only those finished by then (the rest: `late`)."""
    rng = random.Random(f"{run}-{c}")
    own = own_tag(run, c)
    shared = f"shared:{run}"
    appended = late = conflicts = reads = n = 0
    latencies = []
    while time.time() < start:
        time.sleep(0.001)
    try:
        while True:
            now = time.time()
            if now >= end:
                break
            overlapping = overlap and rng.random() < overlap
            tags = [own, shared] if overlapping else [own, f"{own}-{n % 100}"]
            if overlapping:
                after = client.refresh(tags, known)
                reads += 1
            else:
                after = known
            while True:
                t0 = time.perf_counter()
                try:
                    position = client.append(tags, after, f"dcbb-{run}-{c}-{n}")
                except Conflict:
                    conflicts += 1
                    after = client.refresh(tags, known)
                    reads += 1
                    known = max(known, after)
                    continue
                t1 = time.perf_counter()
                if time.time() <= end:
                    appended += 1
                    latencies.append((t1 - t0) * 1000)
                else:
                    late += 1
                known = max(known, position)
                break
            n += 1
    except Exception:
        out["error"] = traceback.format_exc()
    out.update(appended=appended, late=late, conflicts=conflicts, reads=reads, latencies=latencies)


def process_main(args, system, mode, run, clients, overlap, ready, go, start_at, results):
    try:
        recorder = None
        if system == "eventsourcing":
            datastore = es_datastore(args, len(clients))
            datastore.pool.open(wait=True, timeout=30)
            recorder = es_recorder(datastore)
            made = [EventsourcingClient(recorder) for _ in clients]
        elif system == "plain":
            made = [PlainInsertClient(args) for _ in clients]
        else:
            made = [AllSourceClient(args, mode) for _ in clients]
        outs = [{} for _ in clients]
        heads = [first_head(cl, run, c, overlap) for cl, c in zip(made, clients)]
        # One decision per client before the clock starts: long-lived
        # connections have their statements prepared and planned already.
        heads = [
            max(h, cl.append([own_tag(run, c), f"{own_tag(run, c)}-warm"], h, f"dcbb-{run}-{c}-warm"))
            for cl, c, h in zip(made, clients, heads)
        ]
        gc.disable()  # the latency lists only grow: no cycles to collect
        ready.put(os.getpid())
        go.wait()
        start = start_at.value
        end = start + args.seconds
        threads = [
            threading.Thread(target=client_loop, args=(cl, run, c, overlap, h, start, end, out))
            for cl, c, h, out in zip(made, clients, heads, outs)
        ]
        for t in threads:
            t.start()
        while time.time() < start:
            time.sleep(0.0005)
        cpu0 = time.process_time()
        for t in threads:
            t.join()
        cpu1 = time.process_time()
        for cl in made:
            cl.close()
        if recorder is not None:
            recorder.datastore.close()
        results.put({"pid": os.getpid(), "cpu": cpu1 - cpu0, "clients": outs})
    except Exception:
        ready.put(os.getpid())
        results.put({"pid": os.getpid(), "error": traceback.format_exc(), "clients": []})


def cpu_busy():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run_config(args, system, mode, run, nclients, overlap):
    ctx = mp.get_context("spawn")
    nproc = min(nclients, MAX_PROCESSES)
    groups = [list(range(p, nclients, nproc)) for p in range(nproc)]
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=process_main, args=(args, system, mode, run, g, overlap, ready, go, start_at, results))
        for g in groups
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    start_at.value = time.time() + 0.5
    go.set()
    if os.environ.get("DCB_DEBUG"):
        log(f"    window {time.strftime('%T', time.localtime(start_at.value))} + {args.seconds:g} s")
    while time.time() < start_at.value:
        time.sleep(0.001)
    busy0, total0 = cpu_busy()
    time.sleep(args.seconds)
    busy1, total1 = cpu_busy()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    errors = [g["error"] for g in got if "error" in g] + [c["error"] for g in got for c in g["clients"] if "error" in c]
    if errors:
        sys.stderr.write(f"{system} {mode} {nclients} clients failed:\n{errors[0]}\n")
        sys.exit(1)
    outs = [c for g in got for c in g["clients"]]
    latencies = sorted(x for c in outs for x in c["latencies"])
    appended = sum(c["appended"] for c in outs)
    ncpu = os.cpu_count() or 1
    result = {
        "system": system,
        "mode": mode,
        "clients": nclients,
        "overlap": overlap,
        "run": run,
        "appends": appended,
        "late": sum(c["late"] for c in outs),
        "rate": appended / args.seconds,
        "conflicts": sum(c["conflicts"] for c in outs),
        "reads": sum(c["reads"] for c in outs),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "client_cores": sum(g["cpu"] for g in got) / args.seconds,
        "busy_cores": (busy1 - busy0) / max(total1 - total0, 1) * ncpu,
    }
    result["stored"] = stored(args, system, mode, run, nclients)
    expected = result["appends"] + result["late"] + nclients  # + one warm-up decision each
    if result["stored"] != expected:
        sys.stderr.write(f"warning: {system} {mode} {nclients}: {expected} appends reported, {result['stored']} stored\n")
    return result


def stored(args, system, mode, run, nclients):
    """The events of a run in the store (a check of the counts)."""
    tags = [own_tag(run, c) for c in range(nclients)]
    with psycopg.connect(conninfo(args), autocommit=True) as conn:
        if system == "eventsourcing":
            return conn.execute(f"SELECT count(*) FROM public.{ES_TABLE}_tt_tag WHERE tag = ANY(%s)", (tags,)).fetchone()[0]
        if system == "plain":
            return conn.execute(f"SELECT count(*) FROM public.{PLAIN_TABLE} WHERE tags[1] = ANY(%s)", (tags,)).fetchone()[0]
        q = json.dumps([{"tags": [t]} for t in tags])
        return conn.execute("SELECT count(*) FROM allsource.read_query(%s::jsonb, 0, 2147483647)", (q,)).fetchone()[0]


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


# ---------------------------------------------------------------- reads
def load_and_read(args, systems):
    """read_query of one tag over args.read_events events: p50/p99 (ms)."""
    out = {}
    total, tags_count = args.read_events, 10000
    chunk = 100000
    with psycopg.connect(conninfo(args), autocommit=True) as conn:
        if "allsource" in systems:
            log(f"loading {total} events into AllSource (append_batch of 100, tags load:<i mod {tags_count}> and region:<i mod 10>)")
            t0 = time.time()
            for base in range(0, total, chunk):
                conn.execute(
                    """SELECT count(*) FROM generate_series(%(base)s, %(base)s + %(chunk)s - 1, 100) s,
                       LATERAL allsource.append_batch('load-' || s, (
                           SELECT jsonb_agg(jsonb_build_object('type', 'Loaded',
                                      'payload', %(payload)s::jsonb || jsonb_build_object('i', s + i),
                                      'tags', jsonb_build_array('load:' || (s + i) %% %(tags)s, 'region:' || (s + i) %% 10)))
                           FROM generate_series(0, 99) i)) b""",
                    {"base": base, "chunk": min(chunk, total - base), "payload": PAYLOAD, "tags": tags_count},
                )
            out["allsource_load_rate"] = total / (time.time() - t0)
            conn.execute("VACUUM ANALYZE")
            out["allsource"] = time_reads(
                args,
                lambda cur, k: cur.execute(
                    "SELECT * FROM allsource.read_query(%s::jsonb, 0, 1000)",
                    (json.dumps([{"tags": [f"load:{k}"]}]),),
                    prepare=True,
                ).fetchall(),
                tags_count,
            )
        if "eventsourcing" in systems:
            log(f"loading {total} events into eventsourcing (its dcb_unconditional_append_tt, 10,000 per call, the same tags)")
            t0 = time.time()
            for base in range(0, total, 10000):
                conn.execute(
                    """SELECT public.dcb_unconditional_append_tt(ARRAY(
                           SELECT ROW('Loaded', convert_to(%(payload)s, 'UTF8'),
                                      ARRAY['load:' || i %% %(tags)s, 'region:' || i %% 10])::public.dcb_event_tt
                           FROM generate_series(%(base)s, %(base)s + 9999) i))""",
                    {"base": base, "payload": PAYLOAD, "tags": tags_count},
                )
            out["eventsourcing_load_rate"] = total / (time.time() - t0)
            conn.execute("VACUUM ANALYZE")
            datastore = es_datastore(args, 1)
            client = EventsourcingClient(es_recorder(datastore))
            out["eventsourcing"] = time_reads(
                args, lambda cur, k: list(client.recorder.read(client._query([f"load:{k}"]))), tags_count
            )
            datastore.close()
    return out


def time_reads(args, read, tags_count):
    rng = random.Random(7)
    latencies, rows = [], 0
    with psycopg.connect(conninfo(args), autocommit=True) as conn:
        cur = conn.cursor()
        for i in range(args.read_queries + 50):
            k = rng.randrange(tags_count)
            t0 = time.perf_counter()
            got = read(cur, k)
            t1 = time.perf_counter()
            if i >= 50:  # the first 50 warm up caches and prepared statements
                latencies.append((t1 - t0) * 1000)
                rows += len(got)
    latencies.sort()
    return {
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "rows_per_read": rows / len(latencies),
        "reads": len(latencies),
    }


# ---------------------------------------------------------------- report
def log(message):
    sys.stderr.write(f"\033[1m==> {message}\033[0m\n")
    sys.stderr.flush()


def fmt(x, digits=0):
    if x is None or x != x:
        return "-"
    return f"{x:,.{digits}f}"


def report(args, results, reads, server_version):
    lines = []
    p = lines.append
    p(
        f"DCB benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, PostgreSQL {server_version}, "
        f"fsync and synchronous_commit on; {args.seconds:g} s per run"
    )
    p("one event of ~200 bytes with 2 tags per conditional append; condition: either tag after the last known head")
    p("")
    p(f"{'system':<14}{'mode':<9}{'boundaries':<12}{'clients':>7}{'appends/s':>11}{'conflicts':>10}{'reads':>7}"
      f"{'p50_ms':>8}{'p99_ms':>9}{'client_cpu':>11}{'busy_cpu':>9}")
    for r in results:
        p(
            f"{r['system']:<14}{r['mode']:<9}{boundaries(r['overlap']):<12}{r['clients']:>7}{fmt(r['rate']):>11}"
            f"{r['conflicts']:>10}{r['reads']:>7}{fmt(r['p50_ms'], 2):>8}{fmt(r['p99_ms'], 2):>9}"
            f"{fmt(r['client_cores'], 2):>11}{fmt(r['busy_cores'], 2):>9}"
        )
    p("(appends/s: committed decisions per second; conflicts: ZA004 / IntegrityError, each retried after reading again;")
    p(" reads: head + matching events read before an overlapping decision or a retry; latency: the append statement;")
    p(" client_cpu / busy_cpu: cores used by the client processes / by the whole machine during the run)")
    get = {(r["system"], r["mode"], r["overlap"], r["clients"]): r["rate"] for r in results}
    ratios = []
    targets = {(0.0, 1): ">= 1 (never slower)", (0.0, 8): ">= 3", (0.0, 64): ">= 10"}
    for overlap in args.overlaps:
        for n in args.clients:
            a, e = get.get(("allsource", "cond", overlap, n)), get.get(("eventsourcing", "cond", overlap, n))
            if a and e:
                target = targets.get((overlap, n), ">= 1 (never slower)" if n == 1 else "")
                ratios.append((f"AllSource / eventsourcing, {boundaries(overlap)}, {n} clients", a / e, target))
    for n in args.clients:
        i, e, a = (get.get((system, m, 0.0, n)) for system, m in PLAIN_EVENTSOURCING_ALLSOURCE)
        if i and e:
            ratios.append((f"plain INSERT / eventsourcing, disjoint, {n} clients", i / e, "(the ceiling)"))
        if i and a:
            ratios.append((f"AllSource / plain INSERT, disjoint, {n} clients", a / i, ""))
    for n in args.clients:
        a, b, u = (get.get(("allsource", m, 0.0, n)) for m in ("cond", "batch", "nocond"))
        if a and b:
            ratios.append((f"append_if with condition / append_batch, {n} clients", a / b, ">= 0.7"))
        if a and u:
            ratios.append((f"append_if with condition / without, {n} clients", a / u, ""))
    if ratios:
        p("")
        p(f"{'ratio':<62}{'':>6}  target")
        for name, value, target in ratios:
            met = ""
            if target.startswith(">="):
                met = ": met" if value >= float(target.split()[1]) else ": missed"
            p(f"{name:<62}{value:>6.2f}  {target}{met}")
    if reads:
        p("")
        for system in ("allsource", "eventsourcing"):
            if system in reads:
                r = reads[system]
                what = "read_query" if system == "allsource" else "recorder.read"
                p(
                    f"{system} {what} of one tag over {args.read_events:,} events ({r['rows_per_read']:.0f} matching, "
                    f"{r['reads']} reads): p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms "
                    f"(loaded at {reads[system + '_load_rate']:,.0f} events/s)"
                )
    return "\n".join(lines)


PLAIN_EVENTSOURCING_ALLSOURCE = (("plain", "insert"), ("eventsourcing", "cond"), ("allsource", "cond"))


def boundaries(overlap):
    return "disjoint" if not overlap else f"{overlap:.0%} overlap"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dbname", default="bench")
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--overlaps", default="0,0.1")
    parser.add_argument("--systems", default="allsource,eventsourcing,plain")
    parser.add_argument("--read-events", type=int, default=1000000, help="0: no read benchmark")
    parser.add_argument("--read-queries", type=int, default=2000)
    parser.add_argument("--results", help="write the figures as JSON here")
    args = parser.parse_args()
    args.clients = [int(x) for x in args.clients.split(",")]
    args.overlaps = [float(x) for x in args.overlaps.split(",")]
    systems = args.systems.split(",")

    with psycopg.connect(conninfo(args), autocommit=True) as conn:
        server_version = conn.execute("SHOW server_version").fetchone()[0]
    if "eventsourcing" in systems:
        datastore = es_datastore(args, 1)
        es_recorder(datastore).create_table()
        datastore.close()
    if "plain" in systems:
        with psycopg.connect(conninfo(args), autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS public.{PLAIN_TABLE} "
                "(id bigserial PRIMARY KEY, type text NOT NULL, data bytea NOT NULL, tags text[] NOT NULL)"
            )

    # Pairs run back to back, their order alternating, so drift of the shared
    # machine hits both systems alike; the append_batch and unconditional
    # append_if runs sit next to the conditional ones they are compared with.
    plan = []
    for overlap in args.overlaps:
        for n in args.clients:
            pair = [(s, "cond") for s in ("eventsourcing", "allsource") if s in systems]
            if len(plan) % 2:
                pair.reverse()
            plan += [(s, m, overlap, n) for s, m in pair]
            if "allsource" in systems and not overlap and n <= 8:
                plan += [("allsource", "batch", overlap, n), ("allsource", "nocond", overlap, n)]
            if "plain" in systems and not overlap:
                plan.append(("plain", "insert", overlap, n))
    results = []
    for i, (system, mode, overlap, n) in enumerate(plan):
        log(f"[{i + 1}/{len(plan)}] {system} {mode}, {boundaries(overlap)}, {n} clients, {args.seconds:g} s")
        r = run_config(args, system, mode, f"r{i}x{int(time.time())}", n, overlap)
        log(f"    {r['rate']:,.0f} appends/s, {r['conflicts']} conflicts, client {r['client_cores']:.2f} cores")
        results.append(r)
    reads = load_and_read(args, systems) if args.read_events else {}
    text = report(args, results, reads, server_version)
    print(text)
    if args.results:
        with open(args.results, "w") as f:
            json.dump({"results": results, "reads": reads, "report": text}, f, indent=1)


if __name__ == "__main__":
    main()
