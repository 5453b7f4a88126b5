//! Criterion benches of the pure-Rust core: what an append spends outside
//! PostgreSQL. `cargo bench --bench core`.

use allsource_core::batch::parse_batch;
use allsource_core::checksum::{checksum, Body, EventFields, GENESIS};
use allsource_core::ingest::QueuedEvent;
use allsource_core::jsontext::jsonb_text;
use allsource_core::partition::partition_for;
use allsource_core::ring::HeapRing;
use allsource_core::validate::ExpectedVersion;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};

/// A JSON object whose jsonb text is about `bytes` long.
fn payload_of(bytes: usize) -> Value {
    let fields = (bytes / 40).max(1);
    let mut object = serde_json::Map::new();
    for i in 0..fields {
        object.insert(format!("field_{i:04}"), json!(format!("value-{i:020}")));
    }
    Value::Object(object)
}

fn bench_partition(c: &mut Criterion) {
    c.bench_function("partition_for", |b| {
        b.iter(|| partition_for(black_box("customer-1234567"), black_box(32)))
    });
}

fn bench_checksum(c: &mut Criterion) {
    let mut group = c.benchmark_group("checksum");
    for size in [200, 2_000, 64_000] {
        let payload = jsonb_text(&payload_of(size));
        group.throughput(Throughput::Bytes(payload.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            b.iter(|| {
                let event = EventFields {
                    stream_id: "order-1",
                    version: 7,
                    event_type: "OrderPlaced",
                    event_id: [7; 16],
                    payload: Body::Text(payload),
                    metadata: Some(Body::Text(r#"{"user": "alice"}"#)),
                    created_at_unix_micros: 1_767_225_600_000_000,
                    tenant: Some("acme"),
                    tags: &[],
                };
                checksum(black_box(&event), &GENESIS)
            })
        });
    }
    group.finish();
}

fn bench_jsonb_text(c: &mut Criterion) {
    let mut group = c.benchmark_group("jsonb_text");
    for size in [200, 2_000, 64_000] {
        let value = payload_of(size);
        group.throughput(Throughput::Bytes(jsonb_text(&value).len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &value, |b, value| {
            b.iter(|| jsonb_text(black_box(value)))
        });
    }
    group.finish();
}

fn bench_parse_batch(c: &mut Criterion) {
    let events = Value::Array(
        (0..100)
            .map(|i| json!({"type": "ItemAdded", "payload": payload_of(200), "metadata": {"n": i}}))
            .collect(),
    );
    let mut group = c.benchmark_group("parse_batch");
    group.throughput(Throughput::Elements(100));
    group.bench_function("100x200B", |b| {
        b.iter(|| parse_batch(black_box(&events), 1 << 20).unwrap())
    });
    group.finish();
}

/// The ingest queue's ring: one 200-byte event pushed, taken, read and
/// released (what `enqueue` and a worker do per event), alone and with a
/// producer and a consumer on two threads.
fn bench_ring(c: &mut Criterion) {
    let entry = QueuedEvent {
        stream_id: "order-1234".into(),
        expected: ExpectedVersion::Any,
        tenant: None,
        enqueued_at: 0,
        event: allsource_core::batch::NewEvent {
            event_type: "OrderPlaced".into(),
            event_id: None,
            payload: jsonb_text(&payload_of(200)),
            metadata: None,
            tags: Vec::new(),
        },
    }
    .encode();
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Elements(1));
    let heap = HeapRing::new(1024);
    let ring = heap.ring();
    let mut out = Vec::with_capacity(512);
    group.bench_function("push_take_release_200B", |b| {
        b.iter(|| {
            ring.push(black_box(&entry)).unwrap();
            let taken = ring.take().unwrap();
            out.clear();
            ring.read(taken, &mut out);
            ring.release(taken);
        })
    });
    const BATCH: u64 = 10_000;
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("two_threads_10k_200B", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    for _ in 0..BATCH {
                        while ring.push(&entry).is_err() {
                            std::hint::spin_loop();
                        }
                    }
                });
                let mut out = Vec::with_capacity(512);
                let mut got = 0;
                while got < BATCH {
                    if let Some(taken) = ring.take() {
                        out.clear();
                        ring.read(taken, &mut out);
                        ring.release(taken);
                        got += 1;
                    }
                }
            })
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_partition,
    bench_checksum,
    bench_jsonb_text,
    bench_parse_batch,
    bench_ring
);
criterion_main!(benches);
