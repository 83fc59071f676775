//! `colony reference`: the same world in one process, for checking a cluster's answer.

use std::str::FromStr;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use shared::sim::{Rule, World, WorldParams};

use crate::cli::ReferenceArgs;

/// Prints the GET /colony fields for the world after `--ticks` ticks; timing on stderr.
pub fn run(args: ReferenceArgs) -> anyhow::Result<()> {
    let rule =
        Rule::from_str(&args.rule).map_err(|e| anyhow::anyhow!("--rule {:?}: {e}", args.rule))?;
    let params = WorldParams {
        width_in_shards: args.width_in_shards,
        height_in_shards: args.height_in_shards,
        shard_width: args.shard_width,
        shard_height: args.shard_height,
        rule,
        seed: args.seed,
        density: args.density,
        cells: args.cells,
    };
    params.validate().context("invalid world")?;
    // Time the ticks only, not building the initial soup, as the cluster's ticks/s does.
    let mut world = World::new(params.clone()).context("reference run failed")?;
    let started = Instant::now();
    world.run(args.ticks);
    let elapsed = started.elapsed().as_secs_f64();
    let summary = world.summary();
    let cells = params.world_width() * params.world_height();
    let tps = if elapsed > 0.0 {
        args.ticks as f64 / elapsed
    } else {
        0.0
    };
    println!(
        "{}",
        json!({
            "colony_id": null,
            "state": "idle",
            "tick": summary.tick,
            "population": summary.population,
            "fingerprint": summary.fingerprint.to_string(),
            "ticks_per_second": (tps * 10.0).round() / 10.0,
            "backends": 0,
            "shards": params.shard_count(),
        })
    );
    eprintln!(
        "reference: {} ticks of {}x{} cells in {elapsed:.3}s = {:.1} ticks/s, {:.3e} cell updates/s",
        args.ticks,
        params.world_width(),
        params.world_height(),
        tps,
        tps * cells as f64
    );
    Ok(())
}
