//! Benchmarks of the `tifid` protocol crate: parsing and emitting the flow
//! option in a realistic SYN option list, and flow-table lookups in a table
//! of one million detached flows, whose memory cost per flow is measured
//! first with a counting allocator and printed before the benchmarks run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use criterion::Criterion;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tifid::option::{DEFAULT_KIND, MAX_OPTIONS_LEN, find_flow_option, insert_flow_option};
use tifid::{Flow, FlowOptionRepr, FlowTable, Half, Role, Seq48, TableConfig, Tifid, Timestamp};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

/// Bytes currently allocated through [`Counting`].
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees are ours; the counter has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` through this allocator with
        // `layout`; our caller upholds the contract for `new_size`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const FLOWS: usize = 1_000_000;

/// A Linux SYN's options (MSS, SACK-permitted, timestamps, NOP, window
/// scale: 20 bytes), as they leave the kernel.
const LINUX_SYN: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0x9a, 0x1b, 0x2c, 0x3d, 0, 0, 0, 0, 1, 3, 3, 7,
];

fn sample_option() -> FlowOptionRepr {
    FlowOptionRepr {
        tifid: Tifid::new(0x0a45_30be_79bf),
        tiseq: Seq48::new(0x1d),
        tiack: Seq48::new(0x1f),
    }
}

/// Resident set size in bytes, from /proc (Linux), for a cross-check.
fn rss_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Builds a table of `FLOWS` detached flows and prints what it costs.
/// Returns the table and the TIFIDs in it.
fn build_table() -> (FlowTable, Vec<Tifid>) {
    let mut rng = StdRng::seed_from_u64(0x7469_666c_6f77);
    let mut tifids = Vec::with_capacity(FLOWS);
    let config = TableConfig {
        max_flows: FLOWS,
        ..TableConfig::default()
    };
    let live_before = LIVE.load(Ordering::Relaxed);
    let rss_before = rss_bytes();
    let started = Instant::now();
    let mut table = FlowTable::with_capacity(config, FLOWS);
    for i in 0..FLOWS {
        let peer_half = Half::new(rng.random_range(1..=Half::MAX));
        let half = table
            .new_responder_half(peer_half, &mut rng)
            .expect("room for FLOWS flows");
        let tifid = Tifid::from_halves(peer_half, half);
        let peer = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i as u32));
        let mut flow = Flow::new(
            tifid,
            Role::Responder,
            FlowTable::new_isn(&mut rng),
            FlowTable::new_isn(&mut rng),
            peer,
        );
        flow.on_write(4096).expect("write");
        flow.detach(Timestamp::from_millis(i as u64));
        table.insert(flow).expect("insert");
        tifids.push(tifid);
    }
    let elapsed = started.elapsed();
    let live = LIVE.load(Ordering::Relaxed) - live_before;
    println!(
        "FlowTable: {} flows, {:.1} bytes/flow (allocated {} bytes; Flow is {} bytes; built in {:.2?})",
        table.len(),
        live as f64 / FLOWS as f64,
        live,
        std::mem::size_of::<Flow>(),
        elapsed
    );
    if let (Some(before), Some(after)) = (rss_before, rss_bytes()) {
        println!(
            "FlowTable: RSS grew by {:.1} bytes/flow",
            after.saturating_sub(before) as f64 / FLOWS as f64
        );
    }
    (table, tifids)
}

fn option_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("option");
    let mut with_ours = [0u8; MAX_OPTIONS_LEN];
    with_ours[..20].copy_from_slice(&LINUX_SYN);
    with_ours[20..].copy_from_slice(&sample_option().to_bytes(DEFAULT_KIND));
    assert_eq!(
        find_flow_option(&with_ours, DEFAULT_KIND),
        Ok(Some(sample_option()))
    );
    group.bench_function("parse_linux_syn_40B", |b| {
        b.iter(|| find_flow_option(black_box(&with_ours), black_box(DEFAULT_KIND)))
    });
    group.bench_function("emit_into_linux_syn", |b| {
        let repr = sample_option();
        let mut out = [0u8; MAX_OPTIONS_LEN];
        b.iter(|| {
            let len = insert_flow_option(
                black_box(&LINUX_SYN),
                black_box(&repr),
                DEFAULT_KIND,
                &mut out,
            );
            black_box(&out);
            len
        })
    });
    group.finish();
}

fn table_benches(c: &mut Criterion, table: &FlowTable, tifids: &[Tifid]) {
    let mut group = c.benchmark_group("flow_table_1M");
    // Visit the flows in a scattered order so lookups miss the cache as
    // they would under real traffic.
    const STRIDE: usize = 611_953;
    // Every flow in turn, scattered: each lookup misses the cache (the key
    // fetch from `tifids` too).
    group.bench_function("lookup_hit_scattered", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + STRIDE) % tifids.len();
            table.get(black_box(tifids[i])).map(Flow::positions)
        })
    });
    // 1024 flows over and over: their entries stay in the cache.
    group.bench_function("lookup_hit_hot_1024", |b| {
        let hot: Vec<Tifid> = tifids.iter().step_by(977).take(1024).copied().collect();
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % hot.len();
            table.get(black_box(hot[i])).map(Flow::positions)
        })
    });
    group.bench_function("lookup_miss", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + STRIDE) % tifids.len();
            // Flipping the initiator half's top bit gives an unknown TIFID
            // (with overwhelming likelihood).
            let unknown = Tifid::new(tifids[i].value() ^ (1 << 47));
            table.get(black_box(unknown)).is_some()
        })
    });
    group.finish();
}

fn main() {
    let (table, tifids) = build_table();
    let mut criterion = Criterion::default().configure_from_args();
    option_benches(&mut criterion);
    table_benches(&mut criterion, &table, &tifids);
    criterion.final_summary();
}
