//! `colony bench ticks`: starts a colony of a given size on a running cluster (through the
//! coordinator's control plane), runs it, and measures ticks/s and cell updates/s over each
//! window; at the end it pauses the colony and checks it against the same world run in this
//! process by the shared simulation kernel (what `colony reference` runs), bit for bit.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clap::Args;
use serde_json::{json, Value};
use shared::sim::{run_reference, WorldParams};
use tokio::sync::OnceCell;

use super::report::{print, Note};
use super::runner::{measure, summaries, Running, Target};
use super::{http_client, locate, operator_token, BenchError, CommonArgs, Listener};
use crate::cli::TokenArgs;

/// Flags of `colony bench ticks`.
#[derive(Debug, Args)]
pub struct TicksArgs {
    /// The coordinator's control plane, `host:port`; the colony it runs is replaced
    /// [default: the coordinator in the registry].
    #[arg(long)]
    pub control: Option<String>,
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
    /// Starting, running and pausing a colony are the operator's calls.
    #[command(flatten)]
    pub token: TokenArgs,
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

/// The colony's tick, read from the control plane.
fn tick(v: &Value) -> u64 {
    v["tick"].as_u64().unwrap_or(0)
}

/// The colony under measurement: started by the first run, then watched by every run.
#[derive(Clone)]
struct Colony {
    http: reqwest::Client,
    base: String,
    world: Value,
    started: Arc<OnceCell<()>>,
}

#[async_trait]
impl Running for Colony {
    async fn completed(&mut self) -> Result<u64, BenchError> {
        Ok(tick(
            &call(self.http.get(format!("{}/colony", self.base))).await?,
        ))
    }

    /// The ticks of a colony are not timed one by one.
    fn record_latencies(&self) {}

    /// The colony keeps ticking between runs; it is paused once, after the last.
    async fn stop(self: Box<Self>) -> Result<Vec<Duration>, BenchError> {
        Ok(Vec::new())
    }
}

impl Colony {
    /// Starts the colony (restarting any) and runs it, the first time only.
    async fn start(self) -> Result<Box<dyn Running>, BenchError> {
        self.started
            .get_or_try_init(|| async {
                let mut start = self.world.clone();
                start["restart"] = json!(true);
                call(
                    self.http
                        .post(format!("{}/colony-start", self.base))
                        .json(&start),
                )
                .await?;
                // Paused after the last run; this cap only bounds a run whose bench died.
                let cap = 1_000_000_000u64;
                call(
                    self.http
                        .post(format!("{}/colony/run", self.base))
                        .json(&json!({ "ticks": cap })),
                )
                .await
                .map(drop)
            })
            .await?;
        Ok(Box::new(self))
    }
}

/// Runs `colony bench ticks`.
///
/// # Errors
/// A refused target, a control plane that refuses, or a colony that differs from the
/// reference.
pub async fn run(args: TicksArgs) -> Result<(), BenchError> {
    let addr = locate(
        args.control.as_deref(),
        Listener::CoordinatorControl,
        &args.common,
    )
    .await?;
    let token = operator_token(&args.token, &args.common.registry)?;
    let world = json!({
        "width_in_shards": args.width_in_shards, "height_in_shards": args.height_in_shards,
        "shard_width": args.shard_width, "shard_height": args.shard_height,
        "rule": "B3/S23", "seed": args.seed, "density": 0.35,
    });
    let params: WorldParams = serde_json::from_value(world.clone()).map_err(failed)?;
    let colony = Colony {
        http: http_client(token.as_deref())?,
        base: format!("http://{addr}"),
        world,
        started: Arc::new(OnceCell::new()),
    };
    let (http, base) = (colony.http.clone(), colony.base.clone());
    let mut targets = [Target::new("colony", addr.to_string(), None, move || {
        colony.clone().start()
    })];
    let outcome = measure("ticks", &mut targets, &args.common).await?;
    let paused = call(http.post(format!("{base}/colony/pause")).json(&json!({}))).await?;
    let at = tick(&paused);
    let expected = run_reference(&params, at).map_err(failed)?;
    let matches = paused["population"].as_u64() == Some(expected.population)
        && paused["fingerprint"].as_str() == Some(expected.fingerprint.to_string().as_str());
    let load = format!(
        "{}x{} of {}x{}",
        args.width_in_shards, args.height_in_shards, args.shard_width, args.shard_height
    );
    let cells = f64::from(args.width_in_shards)
        * f64::from(args.height_in_shards)
        * f64::from(args.shard_width)
        * f64::from(args.shard_height);
    let summaries = summaries(
        &outcome,
        "ticks",
        &load,
        &[("ticks/s", 1.0), ("cells/s", cells)],
    );
    let verdict = Note {
        text: format!(
            "reference at tick {at}: {}",
            if matches { "match" } else { "DIFFERS" }
        ),
        json: json!({"bench": "ticks", "reference": if matches { "match" } else { "differs" },
                     "tick": at, "population": paused["population"], "fingerprint": paused["fingerprint"]}),
    };
    print(&summaries, &[verdict], args.common.json);
    if !matches {
        return Err(failed(format!(
            "the colony differs from the reference at tick {at}: {paused} vs {expected:?}"
        )));
    }
    Ok(())
}
