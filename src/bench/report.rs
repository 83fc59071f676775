//! A benchmark's results: throughput per repeat and latency samples, summarised as the
//! median and range of throughput and p50/p99 latency, printed as a table or JSON.

use std::time::Duration;

use serde::Serialize;

/// The summary of one target's runs.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The benchmark (`ping`, `frames`, `heartbeats`, `ticks`, `registry`).
    pub bench: &'static str,
    /// What was loaded (`colony`, `raw`, `redis`, `nats`; `post` or `channel`; `register`
    /// or `discover`).
    pub target: String,
    /// Its address.
    pub addr: String,
    /// The load's shape, such as `4x16` (connections × depth).
    pub load: String,
    /// What the throughput counts per second (`req/s`, `frames/s`, `MB/s`, `hb/s`,
    /// `ops/s`, `ticks/s`, `cells/s`).
    pub unit: &'static str,
    /// Measured runs.
    pub repeats: usize,
    /// Median throughput over the runs, in `unit`.
    pub throughput_median: f64,
    /// Slowest run's throughput.
    pub throughput_min: f64,
    /// Fastest run's throughput.
    pub throughput_max: f64,
    /// Median latency, microseconds (`null` where the bench times no single operation).
    pub p50_us: Option<f64>,
    /// 99th percentile latency, microseconds.
    pub p99_us: Option<f64>,
    /// The server's CPU microseconds per request over the measured runs (`--pid`,
    /// `--compare-pid`); `null` when its process was not given.
    pub server_cpu_us_per_request: Option<f64>,
}

/// The `q` quantile (0..=1) of sorted `samples`, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or_default()
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v.get(n / 2).copied().unwrap_or(0.0),
        n => {
            (v.get(n / 2 - 1).copied().unwrap_or(0.0) + v.get(n / 2).copied().unwrap_or(0.0)) / 2.0
        }
    }
}

impl Summary {
    /// The summary of `rates` (`unit` per run) and all runs' latency `samples` (none: no
    /// percentiles).
    pub fn new(
        bench: &'static str,
        target: &str,
        addr: String,
        (load, unit): (String, &'static str),
        rates: &[f64],
        mut samples: Vec<Duration>,
    ) -> Self {
        samples.sort_unstable();
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        let has = !samples.is_empty();
        Summary {
            bench,
            target: target.to_owned(),
            addr,
            load,
            unit,
            repeats: rates.len(),
            throughput_median: median(rates),
            throughput_min: rates.iter().copied().fold(f64::INFINITY, f64::min),
            throughput_max: rates.iter().copied().fold(0.0, f64::max),
            p50_us: has.then(|| micros(quantile(&samples, 0.5))),
            p99_us: has.then(|| micros(quantile(&samples, 0.99))),
            server_cpu_us_per_request: None,
        }
    }
}

/// A throughput for the table: whole numbers, but two decimals below 100 (MB/s, ticks/s).
fn figure(v: f64) -> String {
    if v < 100.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

/// The table of `summaries`, with a header.
pub fn table(summaries: &[Summary]) -> String {
    let mut out = format!(
        "{:<10} {:<8} {:<22} {:>14} {:>8} {:>14} {:>25} {:>10} {:>10} {:>12}\n",
        "bench",
        "target",
        "addr",
        "load",
        "unit",
        "median",
        "range",
        "p50 µs",
        "p99 µs",
        "cpu µs/req"
    );
    for s in summaries {
        out.push_str(&format!(
            "{:<10} {:<8} {:<22} {:>14} {:>8} {:>14} {:>25} {:>10} {:>10} {:>12}\n",
            s.bench,
            s.target,
            s.addr,
            s.load,
            s.unit,
            figure(s.throughput_median),
            format!("{}..{}", figure(s.throughput_min), figure(s.throughput_max)),
            s.p50_us.map_or("-".into(), |v| format!("{v:.1}")),
            s.p99_us.map_or("-".into(), |v| format!("{v:.1}")),
            s.server_cpu_us_per_request
                .map_or("-".into(), |c| format!("{c:.2}"))
        ));
    }
    out
}

/// A line printed after the results: its text under the table, or its JSON object.
#[derive(Debug, Clone)]
pub struct Note {
    /// Under the table.
    pub text: String,
    /// With `--json`.
    pub json: serde_json::Value,
}

/// The ratio of the first summary's median throughput to the second's (`colony / redis`,
/// `channel / post`), when both ran.
pub fn ratio(bench: &'static str, summaries: &[Summary]) -> Option<Note> {
    let (Some(of), Some(to)) = (summaries.first(), summaries.get(1)) else {
        return None;
    };
    if to.throughput_median <= 0.0 {
        return None;
    }
    let ratio = of.throughput_median / to.throughput_median;
    Some(Note {
        text: format!(
            "ratio {} / {}: {ratio:.2} (median throughput)",
            of.target, to.target
        ),
        json: serde_json::json!({"bench": bench, "ratio": ratio, "of": of.target, "to": to.target}),
    })
}

/// Prints `summaries` and `notes`: a table and lines under it, or with `json` one object
/// per line.
pub fn print(summaries: &[Summary], notes: &[Note], json: bool) {
    if json {
        for s in summaries {
            println!("{}", serde_json::to_string(s).unwrap_or_default());
        }
        for n in notes {
            println!("{}", n.json);
        }
    } else {
        print!("{}", table(summaries));
        for n in notes {
            println!("{}", n.text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(quantile(&s, 0.5), Duration::from_micros(50));
        assert_eq!(quantile(&s, 0.99), Duration::from_micros(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn summary_has_median_range_and_percentiles() {
        let s = Summary::new(
            "ping",
            "raw",
            "127.0.0.1:1".into(),
            ("1x1".into(), "req/s"),
            &[10.0, 30.0, 20.0],
            vec![Duration::from_micros(5); 10],
        );
        assert_eq!(
            (s.throughput_median, s.throughput_min, s.throughput_max),
            (20.0, 10.0, 30.0)
        );
        assert_eq!(s.p50_us, Some(5.0));
        assert!(table(&[s]).lines().count() == 2);
    }
}
