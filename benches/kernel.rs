//! Simulation kernel throughput, in cell updates per second (criterion counts cells as
//! elements, so "elem/s" is cell updates/s).
//!
//! - `step/<size>/fast` and `.../plain`: one generation of one grid on one thread, the packed
//!   bitwise kernel against the byte-per-cell one, B3/S23.
//! - `.../fast_b36s23`: the fast kernel on a rule without the B3/S23 shortcut.
//! - `.../fast_torus_tick`: what a backend does per tick for a shard that is its own neighbour:
//!   take the edges, fill the halo, step.
//! - `.../fast_halo_only`: the edges-and-halo part of that tick alone.
//! - `world/default`: a whole reference tick of DESIGN's default world (8 × 5 shards of
//!   250 × 250) on all cores.
//!
//! Sizes: a 250 × 250 shard (the default) and a 2000 × 1250 grid (the default world as one
//! shard), both from the density-0.35 soup.
//! Target: ≥ 2 × 10^9 cell updates/s per core for the fast kernel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shared::sim::{PlainGrid, Rule, ShardGrid, World, WorldParams};

fn soup(width: u32, height: u32) -> WorldParams {
    WorldParams {
        width_in_shards: 1,
        height_in_shards: 1,
        shard_width: width,
        shard_height: height,
        density: 0.35,
        ..WorldParams::default()
    }
}

fn bench_step(c: &mut Criterion) {
    let high_life: Rule = "B36/S23".parse().unwrap();
    for (w, h) in [(250u32, 250u32), (2000, 1250)] {
        let params = soup(w, h);
        let mut group = c.benchmark_group(format!("step/{w}x{h}"));
        group.throughput(Throughput::Elements(u64::from(w) * u64::from(h)));

        let mut fast = ShardGrid::initial(&params, 0, 0).unwrap();
        group.bench_function("fast", |b| {
            b.iter(|| black_box(&mut fast).step(&Rule::CONWAY))
        });

        let mut fast = ShardGrid::initial(&params, 0, 0).unwrap();
        group.bench_function("fast_b36s23", |b| {
            b.iter(|| black_box(&mut fast).step(&high_life))
        });

        let mut fast = ShardGrid::initial(&params, 0, 0).unwrap();
        group.bench_function("fast_torus_tick", |b| {
            b.iter(|| {
                let edges = fast.edges();
                fast.halo_from_neighbours([&edges; 8]).unwrap();
                black_box(&mut fast).step(&Rule::CONWAY);
            })
        });

        let mut fast = ShardGrid::initial(&params, 0, 0).unwrap();
        group.bench_function("fast_halo_only", |b| {
            b.iter(|| {
                let edges = black_box(&fast).edges();
                fast.halo_from_neighbours([&edges; 8]).unwrap();
            })
        });

        let mut plain = PlainGrid::initial(&params, 0, 0).unwrap();
        group.bench_function("plain", |b| {
            b.iter(|| black_box(&mut plain).step(&Rule::CONWAY))
        });
        group.finish();
    }
}

fn bench_world(c: &mut Criterion) {
    let params = WorldParams::default();
    let mut group = c.benchmark_group("world");
    group.throughput(Throughput::Elements(
        params.world_width() * params.world_height(),
    ));
    let mut world = World::new(params).unwrap();
    group.bench_function("default", |b| b.iter(|| black_box(&mut world).step()));
    group.finish();
}

criterion_group!(benches, bench_step, bench_world);
criterion_main!(benches);
