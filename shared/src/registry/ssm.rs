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
//!   its cache at once, other nodes' writes show up within the TTL;
//! - retries `ThrottlingException` (and 5xx answers) with capped, jittered exponential backoff.
//!   The SDK's own retries are turned off so there is one retry policy, this one.
//!
//! Failures become [`SsmError`]s whose message names the cause (unreachable endpoint, timeout,
//! throttling, access denied, rejected credentials) and what to set or grant.
//!
//! This module does not decide when to register or retry registration (that is
//! [`spawn_registration`](super::spawn_registration)) and stores addresses only.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::environment::{
    EnvironmentVariableCredentialsProvider, EnvironmentVariableRegionProvider,
};
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::{ProfileFileCredentialsProvider, ProfileFileRegionProvider};
use aws_config::provider_config::ProviderConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ssm::config::retry::RetryConfig;
use aws_sdk_ssm::config::timeout::TimeoutConfig;
use aws_sdk_ssm::config::{ProvideCredentials, SharedHttpClient};
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::types::ParameterType;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_types::service_config::ServiceConfigKey;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::backoff::Backoff;

use super::{validate_instance_id, ClusterRegistry, RegistryError};
use crate::NodeAddress;

/// How long discovery results are reused before SSM is asked again.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(1);
/// The largest value a Standard-tier parameter holds. SSM enforces it; some emulators do not,
/// so it is checked here before writing.
pub const MAX_VALUE_BYTES: usize = 4096;
/// The longest prefix accepted. SSM caps a parameter name, counted with its ARN, at 1011
/// characters; this leaves room for the ARN, `/backends/` and the longest instance id.
pub const MAX_PREFIX_LEN: usize = 700;
/// SSM hierarchies are at most 15 levels deep; `backends/{id}` takes two.
const MAX_PREFIX_LEVELS: usize = 13;
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
/// How long resolving credentials may take at construction.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting to the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One attempt of one call, connect to last byte.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Error codes SSM (and AWS generally) uses for throttling.
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
];
/// Error codes that mean the credentials themselves were refused.
const CREDENTIAL_CODES: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredToken",
    "ExpiredTokenException",
];
/// Error codes that mean the request will never succeed as it is.
const REJECTED_CODES: &[&str] = &[
    "ValidationException",
    "HierarchyLevelLimitExceededException",
    "HierarchyTypeMismatchException",
    "InvalidAllowedPatternException",
    "ParameterPatternMismatchException",
    "UnsupportedParameterType",
];

/// How to reach SSM and where to keep the entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsmOptions {
    /// Parameter-name prefix, e.g. `/colony`: starts with `/`, no trailing `/`, segments of
    /// `A-Z a-z 0-9 _ . -`, not starting with `aws` or `ssm`.
    pub prefix: String,
    /// How long discovery results are reused; zero turns the cache off.
    pub cache_ttl: Duration,
}

impl SsmOptions {
    /// Options with `prefix` and the default cache TTL.
    pub fn new(prefix: impl Into<String>) -> Self {
        SsmOptions {
            prefix: prefix.into(),
            cache_ttl: DEFAULT_CACHE_TTL,
        }
    }
}

/// Why an SSM call failed, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SsmCause {
    /// The endpoint refused or dropped the connection, or its name did not resolve.
    Unreachable,
    /// No answer within the timeout.
    Timeout,
    /// SSM kept throttling after every retry.
    Throttled,
    /// The credentials are valid but lack a permission.
    AccessDenied,
    /// The credentials are missing, expired or not recognised.
    Credentials,
    /// SSM refused the request as invalid (e.g. a parameter name it does not accept).
    Rejected(String),
    /// SSM failed on its side (5xx) after every retry.
    ServerError,
    /// Anything else, with the error code when SSM gave one.
    Other(String),
}

impl SsmCause {
    /// What an operator should set, grant or check.
    pub fn remedy(&self) -> &'static str {
        match self {
            SsmCause::Unreachable | SsmCause::Timeout => {
                "check that AWS_ENDPOINT_URL_SSM (or AWS_ENDPOINT_URL) is unset for AWS, or \
                 points at a running SSM-compatible server, and that AWS_REGION is right"
            }
            SsmCause::Throttled => {
                "SSM throttles PutParameter at a few calls per second per account: stagger node \
                 starts or raise the account's SSM throughput setting"
            }
            SsmCause::AccessDenied => {
                "grant ssm:PutParameter, ssm:GetParameter, ssm:GetParametersByPath and \
                 ssm:DeleteParameter on the prefix's parameters, or set AWS_PROFILE / \
                 AWS_ACCESS_KEY_ID to credentials that have them"
            }
            SsmCause::Credentials => {
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for \
                 temporary credentials), or AWS_PROFILE, to valid credentials"
            }
            SsmCause::Rejected(_) => {
                "check --ssm-prefix and the instance id against SSM's parameter-name rules"
            }
            SsmCause::ServerError | SsmCause::Other(_) => {
                "retrying; if it persists check the SSM service health and the endpoint"
            }
        }
    }

    fn is_permanent(&self) -> bool {
        matches!(self, SsmCause::Rejected(_))
    }
}

impl fmt::Display for SsmCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SsmCause::Unreachable => f.write_str("endpoint unreachable"),
            SsmCause::Timeout => f.write_str("timed out"),
            SsmCause::Throttled => write!(f, "throttled by SSM ({ATTEMPTS} attempts)"),
            SsmCause::AccessDenied => f.write_str("access denied"),
            SsmCause::Credentials => f.write_str("credentials refused or missing"),
            SsmCause::Rejected(code) => write!(f, "request rejected ({code})"),
            SsmCause::ServerError => write!(f, "SSM server error ({ATTEMPTS} attempts)"),
            SsmCause::Other(code) => write!(f, "failed ({code})"),
        }
    }
}

/// What went wrong with the SSM registry.
#[derive(Debug, thiserror::Error)]
pub enum SsmError {
    /// The registry cannot be built: no region, no credentials, a bad prefix.
    #[error("cannot use the SSM registry: {problem}; {remedy}")]
    Config {
        /// What is missing or wrong.
        problem: String,
        /// What to set.
        remedy: String,
    },
    /// A value larger than a Standard parameter can hold.
    #[error(
        "SSM parameter {name} would hold {len} bytes, over the {MAX_VALUE_BYTES}-byte limit of a \
         Standard parameter"
    )]
    ValueTooLarge {
        /// The parameter.
        name: String,
        /// The value's length in bytes.
        len: usize,
    },
    /// A call to SSM failed.
    #[error("SSM {op} {name} at {endpoint}: {cause}: {detail}; {}", cause.remedy())]
    Call {
        /// The API operation, e.g. `PutParameter`.
        op: &'static str,
        /// The parameter name or path.
        name: String,
        /// The endpoint, as [`SsmClusterRegistry::describe`] names it.
        endpoint: String,
        /// Why it failed.
        cause: SsmCause,
        /// The SDK's description of the failure.
        detail: String,
    },
}

impl SsmError {
    /// True when trying again cannot help: configuration, oversize values, invalid requests.
    pub fn is_permanent(&self) -> bool {
        match self {
            SsmError::Config { .. } | SsmError::ValueTooLarge { .. } => true,
            SsmError::Call { cause, .. } => cause.is_permanent(),
        }
    }

    /// The cause of a failed call, if this is one.
    pub fn cause(&self) -> Option<&SsmCause> {
        match self {
            SsmError::Call { cause, .. } => Some(cause),
            _ => None,
        }
    }

    fn config(problem: impl Into<String>, remedy: impl Into<String>) -> RegistryError {
        RegistryError::Ssm(SsmError::Config {
            problem: problem.into(),
            remedy: remedy.into(),
        })
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
    cache_ttl: Duration,
    cache: Mutex<Cache>,
    /// Bumped by every write of this instance; a discovery that started before a write must not
    /// fill the cache with what it read.
    generation: AtomicU64,
}

#[derive(Default)]
struct Cache {
    coordinator: Option<(Instant, Option<NodeAddress>)>,
    backends: Option<(Instant, Vec<(String, NodeAddress)>)>,
}

impl fmt::Debug for SsmClusterRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SsmClusterRegistry")
            .field("prefix", &self.inner.prefix)
            .field("region", &self.inner.region)
            .field("endpoint", &self.inner.endpoint)
            .field("cache_ttl", &self.inner.cache_ttl)
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
        validate_prefix(&options.prefix)?;
        let http = https_client();
        let region = RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
            .or_else(ProfileFileRegionProvider::new())
            .region()
            .await
            .ok_or_else(|| {
                SsmError::config(
                    "no AWS region is configured",
                    "set AWS_REGION (e.g. AWS_REGION=us-east-1), or a region in the AWS_PROFILE \
                     profile",
                )
            })?;
        let imds = instance_metadata_allowed();
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(region.clone())
            .credentials_provider(credentials_chain(&region, &http, imds))
            .http_client(http)
            .load()
            .await;
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
        validate_prefix(&options.prefix)?;
        let region = sdk.region().map(ToString::to_string).ok_or_else(|| {
            SsmError::config(
                "no AWS region is configured",
                "set AWS_REGION (e.g. AWS_REGION=us-east-1)",
            )
        })?;
        check_credentials(sdk).await?;
        let endpoint = configured_endpoint(sdk);

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
            config = config.http_client(https_client());
        }
        Ok(SsmClusterRegistry {
            inner: Arc::new(Inner {
                client: aws_sdk_ssm::Client::from_conf(config.build()),
                prefix: options.prefix,
                region,
                endpoint,
                cache_ttl: options.cache_ttl,
                cache: Mutex::new(Cache::default()),
                generation: AtomicU64::new(0),
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
        self.invalidate().await;
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
        self.invalidate().await;
        result
    }

    /// Forgets cached discoveries, including those still in flight.
    async fn invalidate(&self) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        *self.inner.cache.lock().await = Cache::default();
    }

    fn fresh(&self, at: Instant) -> bool {
        at.elapsed() < self.inner.cache_ttl
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
    ) -> Result<T, SdkError<E, aws_sdk_ssm::config::http::HttpResponse>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, aws_sdk_ssm::config::http::HttpResponse>>>,
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

    fn failed<E>(
        &self,
        op: &'static str,
        name: &str,
        err: &SdkError<E, aws_sdk_ssm::config::http::HttpResponse>,
    ) -> RegistryError
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
        if let Some((at, cached)) = self.inner.cache.lock().await.coordinator {
            if self.fresh(at) {
                return Ok(cached);
            }
        }
        let generation = self.inner.generation.load(Ordering::SeqCst);
        let fetched_at = Instant::now();
        let found = self.fetch_coordinator().await?;
        let mut cache = self.inner.cache.lock().await;
        if self.inner.generation.load(Ordering::SeqCst) == generation {
            cache.coordinator = Some((fetched_at, found));
        }
        Ok(found)
    }

    async fn discover_backends(&self) -> Result<Vec<(String, NodeAddress)>, RegistryError> {
        if let Some((at, cached)) = &self.inner.cache.lock().await.backends {
            if self.fresh(*at) {
                return Ok(cached.clone());
            }
        }
        let generation = self.inner.generation.load(Ordering::SeqCst);
        let fetched_at = Instant::now();
        let (found, complete) = self.fetch_backends().await?;
        let mut cache = self.inner.cache.lock().await;
        if complete && self.inner.generation.load(Ordering::SeqCst) == generation {
            cache.backends = Some((fetched_at, found.clone()));
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

// === configuration ===

/// The one HTTPS client: hyper with rustls on ring (plain HTTP works too, for local servers).
fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The standard credential sources in the standard order, with the instance-metadata one only
/// where it is allowed.
fn credentials_chain(
    region: &Region,
    http: &SharedHttpClient,
    instance_metadata: bool,
) -> CredentialsProviderChain {
    let conf = ProviderConfig::without_region()
        .with_region(Some(region.clone()))
        .with_http_client(http.clone());
    let chain = CredentialsProviderChain::first_try(
        "Environment",
        EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else(
        "Profile",
        ProfileFileCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    )
    .or_else(
        "WebIdentityToken",
        aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    )
    .or_else(
        "EcsContainer",
        aws_config::ecs::EcsCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    );
    if instance_metadata {
        chain.or_else(
            "Ec2InstanceMetadata",
            aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                .configure(&conf)
                .build(),
        )
    } else {
        chain
    }
}

/// Whether credentials may be asked of the EC2 instance-metadata service: never when
/// `AWS_EC2_METADATA_DISABLED=true`, always when it is `false`, and otherwise only on a
/// machine that says it is an EC2 instance, so a missing configuration elsewhere fails at once
/// instead of waiting on 169.254.169.254.
fn instance_metadata_allowed() -> bool {
    let setting = std::env::var("AWS_EC2_METADATA_DISABLED").ok();
    imds_allowed(setting.as_deref(), looks_like_ec2)
}

fn imds_allowed(disabled: Option<&str>, on_ec2: impl FnOnce() -> bool) -> bool {
    match disabled.map(str::trim) {
        Some(v) if v.eq_ignore_ascii_case("true") => false,
        Some(v) if v.eq_ignore_ascii_case("false") => true,
        _ => on_ec2(),
    }
}

/// Nitro instances name the vendor in DMI; Xen ones have a hypervisor UUID starting `ec2`.
fn looks_like_ec2() -> bool {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    read("/sys/devices/virtual/dmi/id/sys_vendor").trim() == "Amazon EC2"
        || read("/sys/devices/virtual/dmi/id/board_vendor").trim() == "Amazon EC2"
        || read("/sys/hypervisor/uuid")
            .to_ascii_lowercase()
            .starts_with("ec2")
}

/// Resolves the credentials once, so a missing configuration fails now and clearly rather than
/// on every later call.
async fn check_credentials(sdk: &SdkConfig) -> Result<(), RegistryError> {
    const REMEDY: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN \
                          for temporary credentials), or AWS_PROFILE to a profile with \
                          credentials; on EC2 attach an instance role, and off EC2 keep \
                          AWS_EC2_METADATA_DISABLED=true";
    let Some(provider) = sdk.credentials_provider() else {
        return Err(SsmError::config(
            "no AWS credentials provider is configured",
            REMEDY,
        ));
    };
    match tokio::time::timeout(CREDENTIALS_TIMEOUT, provider.provide_credentials()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(SsmError::config(
            format!("no AWS credentials found ({})", one_line(&e)),
            REMEDY,
        )),
        Err(_) => Err(SsmError::config(
            format!("resolving AWS credentials took longer than {CREDENTIALS_TIMEOUT:?}"),
            REMEDY,
        )),
    }
}

/// The endpoint the SSM client will use when one is configured (`AWS_ENDPOINT_URL_SSM`, the
/// profile's `services` section, `AWS_ENDPOINT_URL`), for log lines and messages only.
fn configured_endpoint(sdk: &SdkConfig) -> Option<String> {
    let service_specific = sdk.service_config().and_then(|conf| {
        let key = ServiceConfigKey::builder()
            .service_id("SSM")
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .ok()?;
        conf.load_config(key)
    });
    service_specific.or_else(|| sdk.endpoint_url().map(str::to_owned))
}

/// Checks a prefix against SSM's naming rules, so a bad `--ssm-prefix` fails at startup rather
/// than on every registration.
fn validate_prefix(prefix: &str) -> Result<(), RegistryError> {
    let first_segment = prefix
        .get(1..)
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let problem = if !prefix.starts_with('/') {
        Some("it must start with '/'".to_owned())
    } else if prefix.len() > MAX_PREFIX_LEN {
        Some(format!("it is longer than {MAX_PREFIX_LEN} characters"))
    } else if prefix.ends_with('/') {
        Some("it must not end with '/' (use /colony, not /colony/)".to_owned())
    } else if prefix[1..].split('/').any(str::is_empty) {
        Some("it has an empty segment ('//')".to_owned())
    } else if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
    {
        Some("only A-Z, a-z, 0-9, '_', '.', '-' and '/' are allowed".to_owned())
    } else if first_segment.starts_with("aws") || first_segment.starts_with("ssm") {
        Some("SSM reserves names starting with aws or ssm".to_owned())
    } else if prefix[1..].split('/').count() > MAX_PREFIX_LEVELS {
        Some(format!("it is deeper than {MAX_PREFIX_LEVELS} levels"))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(SsmError::config(
            format!("invalid parameter prefix {prefix:?}: {problem}"),
            "set --ssm-prefix (COLONY_SSM_PREFIX) to a path such as /colony",
        )),
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

/// An error and its sources on one line, each cause once (providers repeat their sources in
/// their own messages).
fn one_line(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

fn sort(found: &mut [(String, NodeAddress)]) {
    found.sort_by(|a, b| a.0.cmp(&b.0));
}

fn is_retryable<E: ProvideErrorMetadata>(
    err: &SdkError<E, aws_sdk_ssm::config::http::HttpResponse>,
) -> bool {
    match err {
        SdkError::ServiceError(service) => {
            service.raw().status().is_server_error()
                || err.code().is_some_and(|c| THROTTLING_CODES.contains(&c))
        }
        _ => false,
    }
}

fn classify<E>(err: &SdkError<E, aws_sdk_ssm::config::http::HttpResponse>) -> SsmCause
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    match err {
        SdkError::DispatchFailure(failure) => {
            if failure.is_timeout() {
                SsmCause::Timeout
            } else if failure.is_io() {
                SsmCause::Unreachable
            } else if caused_by_credentials(err) {
                SsmCause::Credentials
            } else {
                SsmCause::Other("request not sent".to_owned())
            }
        }
        SdkError::TimeoutError(_) => SsmCause::Timeout,
        SdkError::ServiceError(service) => {
            let code = err.code().unwrap_or_default();
            if THROTTLING_CODES.contains(&code) {
                SsmCause::Throttled
            } else if code == "AccessDeniedException" || code == "AccessDenied" {
                SsmCause::AccessDenied
            } else if CREDENTIAL_CODES.contains(&code) {
                SsmCause::Credentials
            } else if REJECTED_CODES.contains(&code) {
                SsmCause::Rejected(code.to_owned())
            } else if service.raw().status().is_server_error() {
                SsmCause::ServerError
            } else if code.is_empty() {
                SsmCause::Other(format!("HTTP {}", service.raw().status().as_u16()))
            } else {
                SsmCause::Other(code.to_owned())
            }
        }
        _ if caused_by_credentials(err) => SsmCause::Credentials,
        SdkError::ResponseError(_) => SsmCause::Other("unreadable response".to_owned()),
        _ => SsmCause::Other("request not built".to_owned()),
    }
}

fn caused_by_credentials(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<CredentialsError>().is_some() {
            return true;
        }
        next = e.source();
    }
    false
}

/// The SDK error with its causes on one line, without the request IDs' noise.
fn describe_sdk_error<E>(err: &SdkError<E, aws_sdk_ssm::config::http::HttpResponse>) -> String
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => one_line(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_prefixes_pass() {
        for prefix in [
            "/colony",
            "/a",
            "/prod/colony-1",
            "/x.y_z/A-B",
            "/colony/ssmlike",
        ] {
            validate_prefix(prefix).unwrap();
        }
        validate_prefix(&format!("/{}", "a".repeat(MAX_PREFIX_LEN - 1))).unwrap();
        validate_prefix(&"/a".repeat(MAX_PREFIX_LEVELS)).unwrap();
    }

    #[test]
    fn bad_prefixes_are_refused_naming_the_rule() {
        let cases = [
            ("", "start with '/'"),
            ("colony", "start with '/'"),
            ("/", "must not end with '/'"),
            ("/colony/", "must not end with '/'"),
            ("/a//b", "empty segment"),
            ("/a b", "only A-Z"),
            ("/col\u{f6}ny", "only A-Z"),
            ("/aws", "aws or ssm"),
            ("/AWS/colony", "aws or ssm"),
            ("/ssm-colony", "aws or ssm"),
        ];
        for (prefix, why) in cases {
            let err = validate_prefix(prefix).unwrap_err();
            assert!(err.is_permanent(), "{prefix:?}");
            let msg = err.to_string();
            assert!(msg.contains(why), "{prefix:?}: {msg}");
            assert!(msg.contains("--ssm-prefix"), "{msg}");
        }
        let too_long = format!("/{}", "a".repeat(MAX_PREFIX_LEN));
        assert!(validate_prefix(&too_long)
            .unwrap_err()
            .to_string()
            .contains("longer than"));
        let too_deep = "/a".repeat(MAX_PREFIX_LEVELS + 1);
        assert!(validate_prefix(&too_deep)
            .unwrap_err()
            .to_string()
            .contains("deeper than"));
    }

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
    fn every_cause_says_what_to_do() {
        let causes = [
            (SsmCause::Unreachable, "AWS_ENDPOINT_URL_SSM"),
            (SsmCause::Timeout, "AWS_ENDPOINT_URL_SSM"),
            (SsmCause::Throttled, "throughput"),
            (SsmCause::AccessDenied, "ssm:PutParameter"),
            (SsmCause::Credentials, "AWS_ACCESS_KEY_ID"),
            (
                SsmCause::Rejected("ValidationException".into()),
                "--ssm-prefix",
            ),
        ];
        for (cause, hint) in causes {
            let err = SsmError::Call {
                op: "PutParameter",
                name: "/colony/coordinator".into(),
                endpoint: "http://127.0.0.1:1".into(),
                cause: cause.clone(),
                detail: "details".into(),
            };
            let msg = err.to_string();
            assert!(msg.contains(hint), "{cause:?}: {msg}");
            assert!(msg.contains("/colony/coordinator"), "{msg}");
            assert!(msg.contains("http://127.0.0.1:1"), "{msg}");
            assert_eq!(err.is_permanent(), matches!(cause, SsmCause::Rejected(_)));
        }
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

    #[test]
    fn instance_metadata_is_asked_only_on_ec2_unless_told() {
        let never = || -> bool { panic!("the machine need not be inspected") };
        assert!(!imds_allowed(Some("true"), never));
        assert!(!imds_allowed(Some(" TRUE "), never));
        assert!(imds_allowed(Some("false"), never));
        assert!(imds_allowed(None, || true));
        assert!(!imds_allowed(None, || false));
        assert!(!imds_allowed(Some(""), || false));
    }
}
