//! `colony reference`: the same world in one process, for checking a cluster's answer.

use std::str::FromStr;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use shared::sim::{Rule, World, WorldParams};
use shared::topology::Dimensions;

use crate::cli::ReferenceArgs;

/// Prints the GET /colony fields for the world after `--ticks` ticks; timing on stderr.
pub fn run(args: ReferenceArgs) -> anyhow::Result<()> {
    let ticks = args.ticks;
    let params = world_params(args)?;
    // Time the ticks only, not building the initial soup, as the cluster's ticks/s does.
    let mut world = World::new(params.clone()).context("reference run failed")?;
    let started = Instant::now();
    world.run(ticks);
    let elapsed = started.elapsed().as_secs_f64();
    let summary = world.summary();
    let cells = params.world_width() * params.world_height();
    let tps = if elapsed > 0.0 {
        ticks as f64 / elapsed
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
        ticks,
        params.world_width(),
        params.world_height(),
        tps,
        tps * cells as f64
    );
    Ok(())
}

/// The world the flags describe, checked as a cluster checks `POST /colony-start`: the
/// topology's dimension limits (shards, cells per shard, cells in the world), then the kernel's.
fn world_params(args: ReferenceArgs) -> anyhow::Result<WorldParams> {
    let rule =
        Rule::from_str(&args.rule).map_err(|e| anyhow::anyhow!("--rule {:?}: {e}", args.rule))?;
    Dimensions::new(
        args.width_in_shards,
        args.height_in_shards,
        args.shard_width,
        args.shard_height,
    )
    .context("invalid world")?;
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
    Ok(params)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::command::{Cli, Command};

    fn params(flags: &[&str]) -> anyhow::Result<WorldParams> {
        let cli = Cli::try_parse_from(["colony", "reference"].iter().chain(flags)).unwrap();
        let Command::Reference(args) = cli.command else {
            panic!("not the reference command");
        };
        world_params(args)
    }

    #[test]
    fn the_defaults_are_the_cluster_defaults() {
        assert_eq!(params(&[]).unwrap(), WorldParams::default());
    }

    #[test]
    fn it_accepts_exactly_the_shards_and_worlds_a_cluster_accepts() {
        let size = |w: &str, h: &str, sw: &str, sh: &str| {
            params(&[
                "--width-in-shards",
                w,
                "--height-in-shards",
                h,
                "--shard-width",
                sw,
                "--shard-height",
                sh,
            ])
        };
        // The largest shard a cluster takes, and one cell row more.
        size("1", "1", "4096", "4096").unwrap();
        let err = format!("{:#}", size("1", "1", "4096", "4097").unwrap_err());
        assert!(err.contains("shard_width*shard_height"), "{err}");
        // More shards, or more cells in the world, than a topology may hold.
        let err = format!("{:#}", size("65537", "1", "1", "1").unwrap_err());
        assert!(err.contains("width_in_shards*height_in_shards"), "{err}");
        let err = format!("{:#}", size("256", "256", "256", "256").unwrap_err());
        assert!(err.contains("world size"), "{err}");
    }
}
