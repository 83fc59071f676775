//! The one measuring loop of every `colony bench` subcommand: for each repeat, for each
//! target in turn (so targets compared see the same machine conditions), start its load, let
//! it warm up, count what it completes over `--duration`, stop it. A progress bar shows on
//! stderr when it is a terminal.
//!
//! What a load is belongs to the subcommand: a [`Target`] starts one and hands back a
//! [`Running`] that counts completions ([`shared::loadgen::Load`] is one).

use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use indicatif::{ProgressBar, ProgressStyle};
use shared::loadgen::Load;

use super::report::Summary;
use super::{cpu_seconds, BenchError, CommonArgs};

/// A load being measured.
#[async_trait]
pub trait Running: Send {
    /// Operations completed since it started.
    async fn completed(&mut self) -> Result<u64, BenchError>;
    /// From now on, keep latencies (the warm-up is over).
    fn record_latencies(&self);
    /// Stops it; the latencies kept.
    async fn stop(self: Box<Self>) -> Result<Vec<Duration>, BenchError>;
}

#[async_trait]
impl Running for Load {
    async fn completed(&mut self) -> Result<u64, BenchError> {
        Ok(Load::completed(self))
    }

    fn record_latencies(&self) {
        Load::record_latencies(self);
    }

    async fn stop(self: Box<Self>) -> Result<Vec<Duration>, BenchError> {
        Load::stop(*self).await.map_err(BenchError::Io)
    }
}

type Starting = Pin<Box<dyn Future<Output = Result<Box<dyn Running>, BenchError>> + Send>>;

/// Something measured: its name and address in the results, and how to start its load.
pub struct Target {
    /// Its name in results (`colony`, `redis`, `post`, `register`).
    pub name: String,
    /// Its address in results.
    pub addr: String,
    /// The server's process on this machine, for its CPU time per operation.
    pub pid: Option<u32>,
    start: Box<dyn FnMut() -> Starting + Send>,
}

impl Target {
    /// A target whose load `start` makes.
    pub fn new<F, Fut>(name: &str, addr: String, pid: Option<u32>, mut start: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Box<dyn Running>, BenchError>> + Send + 'static,
    {
        Target {
            name: name.to_owned(),
            addr,
            pid,
            start: Box::new(move || Box::pin(start())),
        }
    }

    /// A target whose load is a [`Load`] that `start` makes.
    pub fn load<F, Fut, E>(name: &str, addr: String, pid: Option<u32>, mut start: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Load, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let label = name.to_owned();
        Target::new(name, addr, pid, move || {
            let (starting, label) = (start(), label.clone());
            async move {
                starting
                    .await
                    .map(|load| Box::new(load) as Box<dyn Running>)
                    .map_err(|e| BenchError::Load {
                        target: label,
                        source: std::io::Error::other(e.to_string()),
                    })
            }
        })
    }
}

/// What the runs of one target measured.
#[derive(Debug)]
pub struct Outcome {
    /// The target's name.
    pub name: String,
    /// Its address.
    pub addr: String,
    /// Operations per second, one per run.
    pub rates: Vec<f64>,
    /// Every run's latencies.
    pub samples: Vec<Duration>,
    /// The server's CPU seconds and the operations over the measured windows.
    cpu: Option<(f64, u64)>,
}

impl Outcome {
    /// The summary of these runs in `unit`, each rate multiplied by `scale` (1 for the
    /// operations themselves; bytes per operation for a byte rate).
    pub fn summary(
        &self,
        bench: &'static str,
        load: &str,
        unit: &'static str,
        scale: f64,
    ) -> Summary {
        let rates: Vec<f64> = self.rates.iter().map(|r| r * scale).collect();
        let mut s = Summary::new(
            bench,
            &self.name,
            self.addr.clone(),
            (load.to_owned(), unit),
            &rates,
            self.samples.clone(),
        );
        s.server_cpu_us_per_request = self
            .cpu
            .filter(|(_, n)| *n > 0)
            .map(|(cpu, n)| cpu * 1e6 / n as f64);
        s
    }
}

/// The summaries of `outcomes`, each in every `(unit, scale)` of `units` in turn (see
/// [`Outcome::summary`]).
pub fn summaries(
    outcomes: &[Outcome],
    bench: &'static str,
    load: &str,
    units: &[(&'static str, f64)],
) -> Vec<Summary> {
    outcomes
        .iter()
        .flat_map(|o| {
            units
                .iter()
                .map(move |&(unit, scale)| o.summary(bench, load, unit, scale))
        })
        .collect()
}

/// A progress bar on stderr if it is a terminal, else one that draws nothing (output that
/// goes to a file or a pipe stays clean).
fn progress(total: Duration) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(u64::try_from(total.as_millis()).unwrap_or(u64::MAX));
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {elapsed}/{duration} {msg}") {
        bar.set_style(style);
    }
    bar
}

/// Waits `span`, moving `bar` along.
async fn wait(span: Duration, bar: &ProgressBar) {
    let end = tokio::time::Instant::now() + span;
    let step = Duration::from_millis(100);
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            return;
        }
        let nap = step.min(end - now);
        tokio::time::sleep(nap).await;
        bar.inc(u64::try_from(nap.as_millis()).unwrap_or(0));
    }
}

/// Measures every target `--repeat` times, interleaved; one outcome per target, in order.
///
/// # Errors
/// The first load that fails to start or fails while running, or a server whose CPU time
/// cannot be read.
pub async fn measure(
    bench: &str,
    targets: &mut [Target],
    common: &CommonArgs,
) -> Result<Vec<Outcome>, BenchError> {
    let mut outcomes: Vec<Outcome> = targets
        .iter()
        .map(|t| Outcome {
            name: t.name.clone(),
            addr: t.addr.clone(),
            rates: Vec::new(),
            samples: Vec::new(),
            cpu: None,
        })
        .collect();
    let per_run = common.warmup + common.duration;
    let bar = progress(per_run * common.repeat * targets.len() as u32);
    for run in 1..=common.repeat {
        for (target, outcome) in targets.iter_mut().zip(outcomes.iter_mut()) {
            bar.set_message(format!(
                "{bench} {} run {run}/{}",
                target.name, common.repeat
            ));
            let mut load = (target.start)().await?;
            wait(common.warmup, &bar).await;
            load.record_latencies();
            let before = load.completed().await?;
            let cpu_before = target.pid.map(cpu_seconds).transpose()?;
            let started = Instant::now();
            wait(common.duration, &bar).await;
            let done = load.completed().await?.saturating_sub(before);
            let cpu_after = target.pid.map(cpu_seconds).transpose()?;
            let elapsed = started.elapsed().as_secs_f64();
            let samples = load.stop().await.map_err(|e| match e {
                // Name the target whose load failed.
                BenchError::Io(source) => BenchError::Load {
                    target: target.name.clone(),
                    source,
                },
                other => other,
            })?;
            outcome.samples.extend(samples);
            outcome
                .rates
                .push(done as f64 / elapsed.max(f64::MIN_POSITIVE));
            if let Some((b, a)) = cpu_before.zip(cpu_after) {
                let (sum, n) = outcome.cpu.get_or_insert((0.0, 0));
                *sum += a - b;
                *n += done;
            }
        }
    }
    bar.finish_and_clear();
    Ok(outcomes)
}
