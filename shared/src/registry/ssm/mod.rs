//! [`SsmClusterRegistry`]: the cluster registry on AWS SSM Parameter Store (DESIGN §2).
//!
//! Layout, under a prefix (default [`DEFAULT_SSM_PREFIX`](super::DEFAULT_SSM_PREFIX)):
//! `{prefix}/coordinator` and `{prefix}/backends/{instance_id}`, each a `String` parameter
//! holding the exact [`NodeAddress`] JSON, written with `Overwrite=true`. Discovery reads
//! `{prefix}/backends` with `GetParametersByPath` (non-recursive, at most 10 per page, as SSM
//! allows) and follows `NextToken` until there is none: a page may be empty and still not be the
//! last, and a last page may be empty.
//!
//! Region, credentials and endpoint come from the standard AWS configuration
//! (`AWS_REGION`, `AWS_ACCESS_KEY_ID`/`AWS_PROFILE`/web identity/container credentials,
//! `AWS_ENDPOINT_URL_SSM` or `AWS_ENDPOINT_URL`), so the same code talks to AWS or to a local
//! SSM-compatible server. [`SsmClusterRegistry::from_env`] refuses to start without a region or
//! without credentials, before any request is sent, and never asks the EC2 instance-metadata
//! service unless the machine looks like an EC2 instance (or `AWS_EC2_METADATA_DISABLED=false`
//! asks for it): off EC2, a missing configuration fails at once with a message naming what to
//! set, rather than probing 169.254.169.254.
//!
//! SSM is slow to write (`PutParameter` is throttled at a few calls per second per account) and
//! reads are capped near 40 per second, so this registry:
//! - writes only when the stored value differs from the one being registered (a node that
//!   comes back at the same address costs one read, no write); nodes register once at startup
//!   (and on retry), never per heartbeat;
//! - caches discovery results for [`DEFAULT_CACHE_TTL`]; this instance's own writes invalidate
//!   its cache at once, other nodes' writes show up within the TTL (a colony start reads
//!   afresh: `discover_backends_now`, so a backend registered just before it is placed);
//! - retries `ThrottlingException` (and 5xx answers) with capped, jittered exponential backoff.
//!   The SDK's own retries are turned off so there is one retry policy, this one.
//!
//! Failures become [`SsmError`]s whose message names the cause (unreachable endpoint, timeout,
//! throttling, access denied, rejected credentials) and what to set or grant.
//!
//! This module does not decide when to register or retry registration (that is
//! [`spawn_registration`](super::spawn_registration)) and stores addresses only.
//!
//! This file holds the registry and its calls; beside it: `config` (loading the AWS
//! configuration, prefix rules), `cache` (the discovery cache and its [`Clock`]) and `error`
//! ([`SsmCause`], [`SsmError`], reading SDK errors).

mod cache;
mod config;
mod error;

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::config::timeout::TimeoutConfig;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::ParameterType;

use super::backoff::Backoff;
use super::{validate_instance_id, ClusterRegistry, RegistryError};
use crate::NodeAddress;
use cache::DiscoveryCache;
use error::{classify, describe_sdk_error, is_retryable, SsmSdkError};

pub use cache::{Clock, TokioClock};
pub use error::{SsmCause, SsmError};

/// How long discovery results are reused before SSM is asked again.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(1);
/// The largest value a Standard-tier parameter holds. SSM enforces it; some emulators do not,
/// so it is checked here before writing.
pub const MAX_VALUE_BYTES: usize = 4096;
/// The longest prefix accepted. SSM caps a parameter name, counted with its ARN, at 1011
/// characters; this leaves room for the ARN, `/backends/` and the longest instance id.
pub const MAX_PREFIX_LEN: usize = 700;
/// `GetParametersByPath` refuses a larger `MaxResults`.
const PAGE_SIZE: i32 = 10;
/// A server that never stops handing out tokens is not followed forever (100,000 backends).
const MAX_PAGES: usize = 10_000;
/// Attempts of one call while SSM answers that it is throttling us (or failing with a 5xx).
const ATTEMPTS: u32 = 6;
/// The first retry of a throttled call waits about this long; each retry doubles it.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// No retry of a throttled call waits longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// Connecting to the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One attempt of one call, connect to last byte.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach SSM and where to keep the entries.
#[derive(Debug, Clone)]
pub struct SsmOptions {
    /// Parameter-name prefix, e.g. `/colony`: starts with `/`, no trailing `/`, segments of
    /// `A-Z a-z 0-9 _ . -`, not starting with `aws` or `ssm`.
    pub prefix: String,
    /// How long discovery results are reused; zero turns the cache off.
    pub cache_ttl: Duration,
    /// What the discovery cache reads the time from: [`TokioClock`] except in tests, which
    /// move a clock of their own instead of sleeping.
    pub clock: Arc<dyn Clock>,
}

impl SsmOptions {
    /// Options with `prefix`, the default cache TTL and the runtime's clock.
    pub fn new(prefix: impl Into<String>) -> Self {
        SsmOptions {
            prefix: prefix.into(),
            cache_ttl: DEFAULT_CACHE_TTL,
            clock: Arc::new(TokioClock),
        }
    }

    /// The same options with discovery results reused for `cache_ttl`.
    pub fn with_cache_ttl(mut self, cache_ttl: Duration) -> Self {
        self.cache_ttl = cache_ttl;
        self
    }

    /// The same options with the discovery cache reading the time from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// The cluster registry on AWS SSM Parameter Store. Clones share one client and one cache.
#[derive(Clone)]
pub struct SsmClusterRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    client: aws_sdk_ssm::Client,
    prefix: String,
    region: String,
    /// The configured endpoint, or `None` for AWS's own endpoint of the region.
    endpoint: Option<String>,
    cache: DiscoveryCache,
}

impl fmt::Debug for SsmClusterRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SsmClusterRegistry")
            .field("prefix", &self.inner.prefix)
            .field("region", &self.inner.region)
            .field("endpoint", &self.inner.endpoint)
            .field("cache_ttl", &self.inner.cache.ttl())
            .finish_non_exhaustive()
    }
}

// === impl SsmClusterRegistry ===

impl SsmClusterRegistry {
    /// Builds the registry from the standard AWS configuration: region from `AWS_REGION`,
    /// `AWS_DEFAULT_REGION` or the profile; credentials from the environment, the profile
    /// (`AWS_PROFILE`, `~/.aws`), web identity, the container endpoint, and the EC2
    /// instance-metadata service only where allowed (see the module docs); the endpoint from
    /// `AWS_ENDPOINT_URL_SSM` or `AWS_ENDPOINT_URL`, else AWS's own.
    ///
    /// Sends nothing to SSM. Fails at once, naming what to set, when no region is configured
    /// or no credentials can be found.
    ///
    /// # Errors
    /// [`SsmError::Config`] (inside [`RegistryError::Ssm`]).
    pub async fn from_env(options: SsmOptions) -> Result<Self, RegistryError> {
        config::validate_prefix(&options.prefix)?;
        let sdk = config::load_from_env().await?;
        Self::from_sdk_config(&sdk, options).await
    }

    /// Builds the registry from an already loaded AWS configuration (its region, credentials,
    /// endpoint and HTTP client; retries and timeouts are this module's own). Like
    /// [`from_env`](Self::from_env), it checks that a region is set and that the credentials
    /// resolve before returning, and sends nothing to SSM.
    ///
    /// # Errors
    /// [`SsmError::Config`] (inside [`RegistryError::Ssm`]).
    pub async fn from_sdk_config(
        sdk: &SdkConfig,
        options: SsmOptions,
    ) -> Result<Self, RegistryError> {
        config::validate_prefix(&options.prefix)?;
        let region = sdk.region().map(ToString::to_string).ok_or_else(|| {
            SsmError::config(
                "no AWS region is configured",
                "set AWS_REGION (e.g. AWS_REGION=us-east-1)",
            )
        })?;
        config::check_credentials(sdk).await?;
        let endpoint = config::configured_endpoint(sdk);

        let mut config = aws_sdk_ssm::config::Builder::from(sdk)
            // One retry policy: ours, which only retries what SSM asks us to slow down for.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        if sdk.http_client().is_none() {
            config = config.http_client(config::https_client());
        }
        Ok(SsmClusterRegistry {
            inner: Arc::new(Inner {
                client: aws_sdk_ssm::Client::from_conf(config.build()),
                prefix: options.prefix,
                region,
                endpoint,
                cache: DiscoveryCache::new(options.cache_ttl, options.clock),
            }),
        })
    }

    /// The parameter prefix, e.g. `/colony`.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The coordinator's parameter: `{prefix}/coordinator`.
    pub fn coordinator_name(&self) -> String {
        format!("{}/coordinator", self.inner.prefix)
    }

    /// The path holding the backends: `{prefix}/backends`.
    pub fn backends_path(&self) -> String {
        format!("{}/backends", self.inner.prefix)
    }

    /// A backend's parameter: `{prefix}/backends/{instance_id}`.
    ///
    /// # Errors
    /// [`RegistryError::InvalidInstanceId`] if the id breaks
    /// [`validate_instance_id`](super::validate_instance_id).
    pub fn backend_name(&self, instance_id: &str) -> Result<String, RegistryError> {
        validate_instance_id(instance_id)?;
        Ok(format!("{}/backends/{instance_id}", self.inner.prefix))
    }

    /// The value stored under `name` exactly as SSM holds it, or `None` if there is none.
    ///
    /// # Errors
    /// The call failed (see [`SsmError::Call`]).
    pub async fn raw_value(&self, name: &str) -> Result<Option<String>, RegistryError> {
        let got = self
            .call("GetParameter", name, || {
                self.inner.client.get_parameter().name(name).send()
            })
            .await;
        match got {
            Ok(out) => Ok(out.parameter.and_then(|p| p.value)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found()) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.failed("GetParameter", name, &e)),
        }
    }

    fn endpoint_label(&self) -> String {
        match &self.inner.endpoint {
            Some(url) => url.clone(),
            None => format!("the AWS SSM endpoint of {}", self.inner.region),
        }
    }

    /// Writes `address` under `name` unless it already holds exactly that.
    async fn put(&self, name: &str, address: NodeAddress) -> Result<(), RegistryError> {
        let value = serde_json::to_string(&address).map_err(RegistryError::Encode)?;
        check_value_size(name, &value)?;
        let result = async {
            if self.raw_value(name).await?.as_deref() == Some(value.as_str()) {
                tracing::debug!(
                    parameter = name,
                    "registry entry already current; not writing"
                );
                return Ok(());
            }
            self.call("PutParameter", name, || {
                self.inner
                    .client
                    .put_parameter()
                    .name(name)
                    .value(&value)
                    .r#type(ParameterType::String)
                    .overwrite(true)
                    .send()
            })
            .await
            .map(drop)
            .map_err(|e| self.failed("PutParameter", name, &e))
        }
        .await;
        self.inner.cache.invalidate().await;
        result
    }

    /// Deletes `name`; a parameter that is not there is already deleted.
    async fn delete(&self, name: &str) -> Result<(), RegistryError> {
        let result = match self
            .call("DeleteParameter", name, || {
                self.inner.client.delete_parameter().name(name).send()
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found()) =>
            {
                Ok(())
            }
            Err(e) => Err(self.failed("DeleteParameter", name, &e)),
        };
        self.inner.cache.invalidate().await;
        result
    }

    async fn fetch_coordinator(&self) -> Result<Option<NodeAddress>, RegistryError> {
        let name = self.coordinator_name();
        Ok(self
            .raw_value(&name)
            .await?
            .and_then(|value| parse_entry(&name, &value)))
    }

    /// Every backend, sorted, and whether every page was read (a partial list is returned
    /// rather than nothing, but never cached).
    async fn fetch_backends(&self) -> Result<(Vec<(String, NodeAddress)>, bool), RegistryError> {
        let path = self.backends_path();
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        for page in 0..MAX_PAGES {
            let sent = self
                .call("GetParametersByPath", &path, || {
                    self.inner
                        .client
                        .get_parameters_by_path()
                        .path(&path)
                        .recursive(false)
                        .max_results(PAGE_SIZE)
                        .set_next_token(token.clone())
                        .send()
                })
                .await;
            let out = match sent {
                Ok(out) => out,
                Err(e) => {
                    let err = self.failed("GetParametersByPath", &path, &e);
                    if page == 0 {
                        return Err(err);
                    }
                    // Return what was read; the caller sees fewer backends, not none.
                    tracing::warn!(error = %err, pages = page, found = found.len(), "SSM discovery stopped early; returning the backends read so far");
                    sort(&mut found);
                    return Ok((found, false));
                }
            };
            for parameter in out.parameters.unwrap_or_default() {
                let Some(name) = parameter.name else { continue };
                let Some(id) = name
                    .strip_prefix(path.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                else {
                    tracing::warn!(parameter = %name, "skipping registry entry outside {path}");
                    continue;
                };
                if let Err(e) = validate_instance_id(id) {
                    tracing::warn!(parameter = %name, error = %e, "skipping registry entry");
                    continue;
                }
                let value = parameter.value.unwrap_or_default();
                if let Some(address) = parse_entry(&name, &value) {
                    found.push((id.to_owned(), address));
                }
            }
            // Loop on the token, not on the page being empty: servers send empty pages that
            // are not the last, and a last page that is empty.
            match out.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => {
                    sort(&mut found);
                    return Ok((found, true));
                }
            }
        }
        Err(RegistryError::Ssm(SsmError::Call {
            op: "GetParametersByPath",
            name: path,
            endpoint: self.endpoint_label(),
            cause: SsmCause::Other("pagination did not end".to_owned()),
            detail: format!("still handing out NextToken after {MAX_PAGES} pages"),
        }))
    }

    /// Sends one call, retrying with backoff while SSM throttles or fails with a 5xx.
    async fn call<T, E, F, Fut>(
        &self,
        op: &'static str,
        name: &str,
        mut send: F,
    ) -> Result<T, SsmSdkError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SsmSdkError<E>>>,
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let mut backoff = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF);
        let mut attempt = 1;
        loop {
            match send().await {
                Err(e) if attempt < ATTEMPTS && is_retryable(&e) => {
                    let delay = backoff.next_delay();
                    tracing::debug!(
                        op,
                        parameter = %name,
                        attempt,
                        code = e.code().unwrap_or("-"),
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        "SSM asked us to slow down; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn failed<E>(&self, op: &'static str, name: &str, err: &SsmSdkError<E>) -> RegistryError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        RegistryError::Ssm(SsmError::Call {
            op,
            name: name.to_owned(),
            endpoint: self.endpoint_label(),
            cause: classify(err),
            detail: describe_sdk_error(err),
        })
    }
}

#[async_trait]
impl ClusterRegistry for SsmClusterRegistry {
    async fn register_coordinator(&self, address: NodeAddress) -> Result<(), RegistryError> {
        self.put(&self.coordinator_name(), address).await
    }

    async fn unregister_coordinator(&self) -> Result<(), RegistryError> {
        self.delete(&self.coordinator_name()).await
    }

    async fn register_backend(
        &self,
        instance_id: &str,
        address: NodeAddress,
    ) -> Result<(), RegistryError> {
        let name = self.backend_name(instance_id)?;
        self.put(&name, address).await
    }

    async fn unregister_backend(&self, instance_id: &str) -> Result<(), RegistryError> {
        let name = self.backend_name(instance_id)?;
        self.delete(&name).await
    }

    async fn discover_coordinator(&self) -> Result<Option<NodeAddress>, RegistryError> {
        if let Some(cached) = self.inner.cache.coordinator().await {
            return Ok(cached);
        }
        let fetch = self.inner.cache.begin();
        let found = self.fetch_coordinator().await?;
        self.inner.cache.store_coordinator(fetch, found).await;
        Ok(found)
    }

    async fn discover_backends(&self) -> Result<Vec<(String, NodeAddress)>, RegistryError> {
        if let Some(cached) = self.inner.cache.backends().await {
            return Ok(cached);
        }
        self.discover_backends_now().await
    }

    async fn discover_backends_now(&self) -> Result<Vec<(String, NodeAddress)>, RegistryError> {
        let fetch = self.inner.cache.begin();
        let (found, complete) = self.fetch_backends().await?;
        if complete {
            self.inner.cache.store_backends(fetch, &found).await;
        }
        Ok(found)
    }

    fn describe(&self) -> String {
        format!(
            "ssm registry at {} (region {}, endpoint {})",
            self.inner.prefix,
            self.inner.region,
            self.inner
                .endpoint
                .as_deref()
                .unwrap_or("AWS default for the region")
        )
    }
}

// === helpers ===

fn check_value_size(name: &str, value: &str) -> Result<(), RegistryError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(RegistryError::Ssm(SsmError::ValueTooLarge {
            name: name.to_owned(),
            len: value.len(),
        }));
    }
    Ok(())
}

/// The address stored under `name`, or `None` with a warning naming the parameter.
fn parse_entry(name: &str, value: &str) -> Option<NodeAddress> {
    match serde_json::from_str(value) {
        Ok(address) => Some(address),
        Err(e) => {
            tracing::warn!(parameter = %name, error = %e, "skipping registry entry: not a NodeAddress");
            None
        }
    }
}

fn sort(found: &mut [(String, NodeAddress)]) {
    found.sort_by(|a, b| a.0.cmp(&b.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_over_4_kb_are_refused_before_sending() {
        check_value_size("/colony/coordinator", &"x".repeat(MAX_VALUE_BYTES)).unwrap();
        let err =
            check_value_size("/colony/coordinator", &"x".repeat(MAX_VALUE_BYTES + 1)).unwrap_err();
        assert!(err.is_permanent());
        let msg = err.to_string();
        assert!(msg.contains("/colony/coordinator"), "{msg}");
        assert!(msg.contains("4097 bytes"), "{msg}");
        assert!(msg.contains("4096-byte limit"), "{msg}");
    }

    #[test]
    fn the_longest_address_fits_easily() {
        let ip = std::net::Ipv6Addr::new(
            0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
        );
        let address = NodeAddress::new(ip.into(), u16::MAX, u16::MAX, u16::MAX);
        let json = serde_json::to_string(&address).unwrap();
        assert!(json.len() < 200, "{json}");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut backoff = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF);
        let mut ceiling = INITIAL_BACKOFF;
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(MAX_BACKOFF);
        }
        // Jitter: a run of delays at the cap is not all the same.
        let delays: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 1, "{delays:?}");
    }
}
