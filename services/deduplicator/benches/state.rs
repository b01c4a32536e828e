//! The deduplicator's state, in memory, against the obvious baseline in the
//! same run: the ids as strings in a `HashSet`, with a FIFO of them for
//! expiry (what a naive service or a string-keyed store keeps).
//! Run: `cargo bench -p adpipe-deduplicator --bench state`.
//!
//! - `decide`: one event's verdict on a partition holding a steady 1M ids
//!   (each new id pushes the oldest out of the window), 5% of events being
//!   copies; `format_id_only` is the share both pay for making the id;
//! - `restore`: rebuilding a 1M-id partition from its snapshot bytes.

use std::collections::{HashSet, VecDeque};
use std::hint::black_box;

use adpipe_deduplicator::snapshot;
use adpipe_deduplicator::state::{DedupState, Verdict, id_hash};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Ids a partition holds: the window is this many ms and events are 1 ms apart.
const FILLED: u64 = 1_000_000;
const T0: i64 = 1_763_700_000_000;

fn event_id(n: u64) -> String {
    format!("imp-42-{n}-3f6c1d2e-9b7a-4c55-8e21-{n:012}")
}

/// The n-th event (n ≥ FILLED): mostly new, every 20th a copy of an event
/// seen 1,000 events earlier.
fn stream_event(n: u64) -> String {
    if n.is_multiple_of(20) {
        event_id(n - 1_000)
    } else {
        event_id(n)
    }
}

/// The baseline: string ids, expired in arrival order.
struct StringWindow {
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl StringWindow {
    fn check_and_insert(&mut self, id: String) -> Verdict {
        if self.seen.contains(&id) {
            return Verdict::Duplicate;
        }
        self.seen.insert(id.clone());
        self.order.push_back(id);
        if self.order.len() as u64 > FILLED
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        Verdict::New
    }
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));

    let mut state = DedupState::new(FILLED as i64, 0);
    let mut naive = StringWindow {
        seen: HashSet::new(),
        order: VecDeque::new(),
    };
    for n in 0..FILLED {
        state.check_and_insert(id_hash(&event_id(n)), T0 + n as i64);
        naive.check_and_insert(event_id(n));
    }

    let mut n = FILLED;
    group.bench_function("format_id_only", |b| {
        b.iter(|| {
            n += 1;
            black_box(stream_event(n))
        })
    });
    let mut n = FILLED;
    group.bench_function("adpipe_state", |b| {
        b.iter(|| {
            n += 1;
            let id = stream_event(n);
            black_box(state.check_and_insert(id_hash(black_box(&id)), T0 + n as i64))
        })
    });
    let mut n = FILLED;
    group.bench_function("baseline_string_set", |b| {
        b.iter(|| {
            n += 1;
            black_box(naive.check_and_insert(black_box(stream_event(n))))
        })
    });
    group.finish();
}

fn restore(c: &mut Criterion) {
    let mut group = c.benchmark_group("restore");
    group.sample_size(10);
    group.throughput(Throughput::Elements(FILLED));
    let entries: Vec<(u128, i64)> = (0..FILLED)
        .map(|n| (id_hash(&event_id(n)), T0 + n as i64))
        .collect();
    let binding = snapshot::Binding {
        offset: FILLED as i64,
        ..snapshot::Binding::default()
    };
    let bytes = snapshot::encode(&binding, entries.iter().copied());
    group.bench_function("from_snapshot_bytes", |b| {
        b.iter(|| {
            let saved = snapshot::decode(black_box(&bytes)).expect("valid snapshot");
            let mut state = DedupState::new(FILLED as i64, 0);
            state.reserve(saved.entries().len());
            for (id, event_time) in saved.entries() {
                state.remember(id, event_time);
            }
            black_box(state.len())
        })
    });
    group.finish();
}

criterion_group!(benches, decide, restore);
criterion_main!(benches);
