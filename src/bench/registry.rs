//! `colony bench registry`: latency and rate of the two registry calls nodes make, against
//! the registry the flags select (`--registry file --registry-dir DIR`, or `ssm`), as the
//! nodes take them: registering a backend never registered before, then discovering the
//! backends. Each is its own result; the fake backends a run registers are removed when it
//! ends, before discovery is measured, so a live cluster's registry is left as it was.

use std::sync::Arc;

use clap::Args;
use shared::registry::load::{start, Op};
use shared::registry::RegistryKind;

use super::report::print;
use super::runner::{measure, summaries, Target};
use super::{BenchError, CommonArgs};

/// Flags of `colony bench registry` (the registry itself: the common `--registry` flags).
#[derive(Debug, Args)]
pub struct RegistryBenchArgs {
    /// Calls in flight at once, each from its own worker.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub workers: u32,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// True if `url`'s host is loopback (`http://127.0.0.1:5000`, `http://localhost:5000`).
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Runs `colony bench registry`.
///
/// # Errors
/// A registry that cannot be opened, an SSM endpoint that is not loopback without
/// `--allow-remote`, or a failed call.
pub async fn run(args: RegistryBenchArgs) -> Result<(), BenchError> {
    let (kind, config) = args.common.registry.resolve()?;
    let place = match kind {
        RegistryKind::File => config.registry_dir.display().to_string(),
        RegistryKind::Ssm => {
            let endpoint = ["AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL"]
                .iter()
                .find_map(|name| std::env::var(name).ok());
            if !args.common.allow_remote && !endpoint.as_deref().is_some_and(is_loopback_url) {
                return Err(BenchError::RemoteRegistry);
            }
            format!("ssm:{}", config.ssm_prefix)
        }
    };
    let registry = args.common.registry.open().await?;
    let prefix = format!("bench_{}", std::process::id());
    let workers = args.workers;
    let mut targets: Vec<Target> = [Op::Register, Op::Discover]
        .into_iter()
        .map(|op| {
            let (registry, prefix) = (Arc::clone(&registry), prefix.clone());
            Target::load(op.name(), place.clone(), None, move || {
                let load = start(registry.clone(), op, &prefix, workers);
                async move { Ok::<_, std::io::Error>(load) }
            })
        })
        .collect();
    let outcomes = measure("registry", &mut targets, &args.common).await?;
    let load = format!("{workers}w");
    let summaries = summaries(&outcomes, "registry", &load, &[("ops/s", 1.0)]);
    print(&summaries, &[], args.common.json);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_url;

    #[test]
    fn only_loopback_endpoints_are_loopback() {
        assert!(is_loopback_url("http://127.0.0.1:5000"));
        assert!(is_loopback_url("http://localhost:5000/"));
        assert!(is_loopback_url("http://[::1]:5000"));
        assert!(!is_loopback_url("https://ssm.us-east-1.amazonaws.com"));
        assert!(!is_loopback_url("http://192.0.2.1:5000"));
    }
}
