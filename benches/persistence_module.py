#!/usr/bin/env python3
"""eventsourcing's persistence modules: AllSource's (eventsourcing_allsource)
against the library's own PostgreSQL module, on the same server and database.

Run by benches/persistence_module.sh, which sets up the cluster, the database
and the venv (clients/python/requirements-test.txt, plus ./clients/python).
Each module gets the same measurements, made the way the library's own
performance tests make them, through each module's application recorder:

  * throughput, the shape of the library's test_concurrent_throughput: a job
    inserts 50 events of one new aggregate in one insert_events call; N
    threads (1, 8, 32) run jobs back to back for a fixed time, with a pool of
    N connections; events per second. Two payloads: the library test's
    (state b"state", which AllSource stores as base64) and a ~200-byte JSON
    object as the library's transcoder writes it (stored as JSON);
  * the library's test_performance: one insert_events call of one event of
    a new aggregate, one thread, microseconds per insert (application
    recorder; process recorder with a tracking record);
  * reading an aggregate back (select_events of a 50-event aggregate) and a
    page of 500 notifications, one thread, microseconds per call.

Threads are spread over up to 8 processes (like the library's threads, but
without one interpreter's lock capping the clients); the clients' CPU time
is printed beside each figure, so a client-bound run shows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from uuid import uuid4

JSON_STATE = json.dumps(
    {
        "originator_topic": "bench.domain:Order",
        "timestamp": {"_type_": "datetime_iso", "_data_": "2026-12-02T03:00:00.000000+00:00"},
        "sku": "SKU-12345",
        "qty": 3,
        "price": {"_type_": "decimal_str", "_data_": "19.99"},
        "note": "a two hundred byte payload, roughly what an order event carries",
    },
    separators=(",", ":"),
).encode()
STATES = {"bytes": b"state", "json": JSON_STATE}
MODULES = {"allsource": "eventsourcing_allsource", "postgres": "eventsourcing.postgres"}
EVENTS_PER_JOB = 50
MAX_PROCESSES = 8


def environment(args, module, pool_size, name, create_table=False):
    return {
        "PERSISTENCE_MODULE": MODULES[module],
        "POSTGRES_DBNAME": args.dbname,
        "POSTGRES_HOST": args.host,
        "POSTGRES_PORT": str(args.port),
        "POSTGRES_USER": args.user,
        "POSTGRES_PASSWORD": "",
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "0",
        "CREATE_TABLE": "y" if create_table else "n",
        "name": name,
    }


def recorders(args, module, pool_size, name, create_table=False):
    from eventsourcing.persistence import InfrastructureFactory
    from eventsourcing.utils import Environment

    env = environment(args, module, pool_size, name, create_table)
    factory = InfrastructureFactory.construct(Environment(name=env.pop("name"), env=env))
    return factory, factory.application_recorder(), factory.process_recorder()


def job(recorder, state):
    from eventsourcing.persistence import StoredEvent

    originator_id = uuid4()
    recorder.insert_events(
        [StoredEvent(originator_id, v, "topic", state) for v in range(1, EVENTS_PER_JOB + 1)]
    )


def process_main(args, module, name, threads, state, go, end_at, results):
    import threading

    factory, recorder, _ = recorders(args, module, threads, name)
    job(recorder, state)  # statements prepared, connections open
    counts = [0] * threads

    def loop(i):
        while time.time() < end_at.value:
            job(recorder, state)
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    go.wait()
    cpu = time.process_time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    results.put((sum(counts), time.process_time() - cpu))
    factory.close()


def throughput(args, module, name, threads, state):
    """Events per second of `threads` threads inserting jobs for args.seconds."""
    ctx = mp.get_context("spawn")
    processes = min(threads, MAX_PROCESSES)
    go, results = ctx.Event(), ctx.Queue()
    end_at = ctx.Value("d", 0.0)
    per_process = [threads // processes + (i < threads % processes) for i in range(processes)]
    procs = [
        ctx.Process(target=process_main, args=(args, module, name, n, state, go, end_at, results))
        for n in per_process
    ]
    for p in procs:
        p.start()
    time.sleep(2 + 0.2 * processes)  # connected and warmed up
    started = time.time()
    end_at.value = started + args.seconds
    go.set()
    # A client that died reports nothing: fail rather than wait for ever.
    out = [results.get(timeout=args.seconds + 120) for _ in procs]
    elapsed = time.time() - started
    for p in procs:
        p.join()
    jobs = sum(n for n, _ in out)
    return jobs * EVENTS_PER_JOB / elapsed, sum(c for _, c in out) / elapsed


def per_call_us(func, number):
    for _ in range(10):
        func()
    started = time.perf_counter()
    for _ in range(number):
        func()
    return 1e6 * (time.perf_counter() - started) / number


def latencies(args, module, name):
    from eventsourcing.persistence import StoredEvent, Tracking

    factory, app, process = recorders(args, module, 1, name + "_latency", create_table=True)
    notification_ids = iter(range(1, 10**9))

    def insert_one():
        app.insert_events([StoredEvent(uuid4(), 1, "topic1", b"state1")])

    def insert_tracked():
        process.insert_events(
            [StoredEvent(uuid4(), 1, "topic1", b"state1")],
            tracking=Tracking("upstream_app", next(notification_ids)),
        )

    aggregate = uuid4()
    app.insert_events([StoredEvent(aggregate, v, "topic", JSON_STATE) for v in range(1, 51)])
    figures = {
        "insert 1 event": per_call_us(insert_one, args.calls),
        "insert 1 event + tracking": per_call_us(insert_tracked, args.calls),
        "select_events (50 events)": per_call_us(lambda: app.select_events(aggregate), args.calls),
        "select_notifications (500)": per_call_us(
            lambda: app.select_notifications(None, 500), max(args.calls // 10, 10)
        ),
    }
    factory.close()
    return figures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dbname", default="bench")
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--threads", default="1,8,32")
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    threads_list = [int(t) for t in args.threads.split(",")]
    cpus = os.cpu_count()
    for module in MODULES:  # tables first, by one client (concurrent CREATEs race)
        recorders(args, module, 1, f"bench_{module}", create_table=True)[0].close()
    print(f"eventsourcing persistence modules, {args.seconds:g} s per run, {cpus} cores")
    print("\nthroughput: jobs of 50 events of one new aggregate (the shape of test_concurrent_throughput)")
    print(f"{'state':6} {'threads':>7} {'allsource ev/s':>15} {'postgres ev/s':>14} {'ratio':>6}   client CPU (cores) as/pg")
    for state_name, state in STATES.items():
        for threads in threads_list:
            rates = {}
            for module in MODULES:
                rates[module] = throughput(args, module, f"bench_{module}", threads, state)
            ratio = rates["allsource"][0] / rates["postgres"][0]
            print(
                f"{state_name:6} {threads:>7} {rates['allsource'][0]:>15,.0f} {rates['postgres'][0]:>14,.0f} "
                f"{ratio:>6.2f}   {rates['allsource'][1]:.2f}/{rates['postgres'][1]:.2f}",
                flush=True,
            )
    print("\nlatency, one thread (the library's test_performance and reads), microseconds per call")
    figures = {module: latencies(args, module, f"bench_{module}") for module in MODULES}
    print(f"{'':28} {'allsource':>10} {'postgres':>10} {'ratio pg/as':>12}")
    for what in figures["allsource"]:
        a, p = figures["allsource"][what], figures["postgres"][what]
        print(f"{what:28} {a:>10.0f} {p:>10.0f} {p / a:>12.2f}")


if __name__ == "__main__":
    main()
