//! `colony bench ticks`: starts a colony of a given size on a running cluster (through the
//! coordinator's control plane), runs it, and measures ticks/s and cell updates/s over each
//! window; at the end it pauses the colony and checks it against the same world run in this
//! process by the shared simulation kernel (what `colony reference` runs), bit for bit.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};
use shared::sim::{run_reference, WorldParams};

use super::report::{table, Summary};
use super::{resolve, BenchError, CommonArgs};

/// Flags of `colony bench ticks`.
#[derive(Debug, Args)]
pub struct TicksArgs {
    /// The coordinator's control plane, `host:port`. The colony it runs is replaced.
    #[arg(long)]
    pub control: String,
    /// Shards across.
    #[arg(long, default_value_t = 4)]
    pub width_in_shards: u32,
    /// Shards down.
    #[arg(long, default_value_t = 2)]
    pub height_in_shards: u32,
    /// Cells across a shard.
    #[arg(long, default_value_t = 64)]
    pub shard_width: u32,
    /// Cells down a shard.
    #[arg(long, default_value_t = 64)]
    pub shard_height: u32,
    /// The seed of the initial cells.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Why `colony bench ticks` failed, beyond the shared reasons.
fn failed(what: impl std::fmt::Display) -> BenchError {
    BenchError::Load {
        target: "colony".into(),
        source: std::io::Error::other(what.to_string()),
    }
}

/// Sends `request`; the JSON answer, or an error with the status and body.
async fn call(request: reqwest::RequestBuilder) -> Result<Value, BenchError> {
    let response = request.send().await.map_err(failed)?;
    let status = response.status();
    let body: Value = response.json().await.map_err(failed)?;
    if !status.is_success() {
        return Err(failed(format!("{status}: {body}")));
    }
    Ok(body)
}

/// Runs `colony bench ticks`.
///
/// # Errors
/// A refused target, a control plane that refuses, or a colony that differs from the
/// reference.
pub async fn run(args: TicksArgs) -> Result<(), BenchError> {
    let addr = resolve(&args.control, args.common.allow_remote).await?;
    let base = format!("http://{addr}");
    let http = shared::tls::http_client(None)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(failed)?;
    let world = json!({
        "width_in_shards": args.width_in_shards, "height_in_shards": args.height_in_shards,
        "shard_width": args.shard_width, "shard_height": args.shard_height,
        "rule": "B3/S23", "seed": args.seed, "density": 0.35,
    });
    let params: WorldParams = serde_json::from_value(world.clone()).map_err(failed)?;
    let mut start = world.clone();
    start["restart"] = json!(true);
    call(http.post(format!("{base}/colony-start")).json(&start)).await?;
    // Paused below once measured; this cap only bounds a run whose bench died first.
    let cap = 1_000_000_000u64;
    call(
        http.post(format!("{base}/colony/run"))
            .json(&json!({ "ticks": cap })),
    )
    .await?;
    let tick = |v: &Value| v["tick"].as_u64().unwrap_or(0);
    tokio::time::sleep(args.common.warmup).await;
    let cells = f64::from(args.width_in_shards)
        * f64::from(args.height_in_shards)
        * f64::from(args.shard_width)
        * f64::from(args.shard_height);
    let mut rates = Vec::new();
    for _ in 0..args.common.repeat {
        let before = tick(&call(http.get(format!("{base}/colony"))).await?);
        let started = Instant::now();
        tokio::time::sleep(args.common.duration).await;
        let after = tick(&call(http.get(format!("{base}/colony"))).await?);
        rates.push(after.saturating_sub(before) as f64 / started.elapsed().as_secs_f64());
    }
    let paused = call(http.post(format!("{base}/colony/pause")).json(&json!({}))).await?;
    let at = tick(&paused);
    let expected = run_reference(&params, at).map_err(failed)?;
    let matches = paused["population"].as_u64() == Some(expected.population)
        && paused["fingerprint"].as_str() == Some(expected.fingerprint.to_string().as_str());
    let load = format!(
        "{}x{} of {}x{}",
        args.width_in_shards, args.height_in_shards, args.shard_width, args.shard_height
    );
    let cell_rates: Vec<f64> = rates.iter().map(|r| r * cells).collect();
    let summaries = [
        Summary::new(
            "ticks",
            "colony",
            addr.to_string(),
            (load.clone(), "ticks/s"),
            &rates,
            Vec::new(),
        ),
        Summary::new(
            "ticks",
            "colony",
            addr.to_string(),
            (load, "cells/s"),
            &cell_rates,
            Vec::new(),
        ),
    ];
    let verdict = json!({"bench": "ticks", "reference": if matches { "match" } else { "differs" },
                         "tick": at, "population": paused["population"], "fingerprint": paused["fingerprint"]});
    if args.common.json {
        for s in &summaries {
            println!("{}", serde_json::to_string(s).unwrap_or_default());
        }
        println!("{verdict}");
    } else {
        print!("{}", table(&summaries));
        println!(
            "reference at tick {at}: {}",
            if matches { "match" } else { "DIFFERS" }
        );
    }
    if !matches {
        return Err(failed(format!(
            "the colony differs from the reference at tick {at}: {paused} vs {expected:?}"
        )));
    }
    Ok(())
}
