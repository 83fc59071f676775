//! The SSM registry against a real SSM-compatible server (moto), plus a scripted fake server
//! for the answers moto never gives (throttling, access denied, refused credentials).
//!
//! - The registry contract suite, unchanged, one fresh moto per check.
//! - Pagination: 0, 1, 10, 20 and 25 backends all come back (moto ends with an empty page).
//! - Entries that are not NodeAddress JSON are skipped with a warning naming the parameter.
//! - Writes only when the value changes; the discovery cache and its invalidation.
//! - Throttling retried with backoff, then reported; access denied and refused credentials
//!   reported at once; an unreachable endpoint named.
//! - Configuration from the environment ([`SsmClusterRegistry::from_env`]), in a child process
//!   with a cleared environment: works against moto, and a missing region or missing
//!   credentials fails fast with a clear message, connecting nowhere.
//!
//! moto must be installed (`./scripts/setup.sh`); without it these tests fail, they do not
//! skip. Every client here talks to 127.0.0.1 only, with test credentials.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, TcpListener as StdListener};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ssm::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_ssm::types::ParameterType;
use shared::registry::contract::{Fixture, RawView};
use shared::registry::{
    Clock, ClusterRegistry, RegistryError, SsmCause, SsmClusterRegistry, SsmError, SsmOptions,
    DEFAULT_CACHE_TTL,
};
use shared::test_support::free_port;
use shared::test_support::logs::warnings;
use shared::test_support::moto::{self, Moto};
use shared::NodeAddress;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

// === helpers ===

/// The AWS configuration of an in-process client of `endpoint`: test credentials, a region,
/// nothing read from the environment.
fn sdk_config(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test",
            "test",
            None,
            None,
            "colony-tests",
        )))
        .build()
}

async fn registry_at(endpoint: &str, prefix: &str, cache_ttl: Duration) -> SsmClusterRegistry {
    let options = SsmOptions::new(prefix).with_cache_ttl(cache_ttl);
    SsmClusterRegistry::from_sdk_config(&sdk_config(endpoint), options)
        .await
        .unwrap()
}

/// A clock that moves only when told, for the discovery cache: what is cached is then the
/// same however long the calls to moto take.
#[derive(Debug)]
struct ManualClock {
    start: tokio::time::Instant,
    elapsed_ms: AtomicU64,
}

impl ManualClock {
    fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            start: tokio::time::Instant::now(),
            elapsed_ms: AtomicU64::new(0),
        })
    }

    fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap();
        self.elapsed_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.elapsed_ms.load(Ordering::SeqCst))
    }
}

/// A plain SSM client of `endpoint`, to plant entries the registry would never write.
fn raw_client(endpoint: &str) -> aws_sdk_ssm::Client {
    let config = aws_sdk_ssm::config::Builder::from(&sdk_config(endpoint))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    aws_sdk_ssm::Client::from_conf(config)
}

async fn start_moto() -> Moto {
    tokio::task::spawn_blocking(Moto::start).await.unwrap()
}

fn v4(port: u16) -> NodeAddress {
    NodeAddress::new(Ipv4Addr::LOCALHOST.into(), port, port + 1, port + 2)
}

fn ssm_error(err: RegistryError) -> SsmError {
    match err {
        RegistryError::Ssm(e) => e,
        other => panic!("expected an SSM error, got {other:?}"),
    }
}

// === the contract suite ===

/// Reads values exactly as SSM holds them.
struct SsmRaw(SsmClusterRegistry);

#[async_trait]
impl RawView for SsmRaw {
    async fn raw_coordinator(&self) -> Result<Option<String>, RegistryError> {
        self.0.raw_value(&self.0.coordinator_name()).await
    }

    async fn raw_backend(&self, instance_id: &str) -> Result<Option<String>, RegistryError> {
        self.0.raw_value(&self.0.backend_name(instance_id)?).await
    }
}

mod ssm_registry {
    use super::*;

    /// A fresh moto per check, the default prefix and the default cache.
    async fn fixture() -> Fixture {
        let moto = start_moto().await;
        let registry = registry_at(&moto.endpoint(), "/colony", DEFAULT_CACHE_TTL).await;
        Fixture {
            registry: Arc::new(registry.clone()),
            raw: Arc::new(SsmRaw(registry)),
            guard: Box::new(moto),
        }
    }

    shared::registry_contract_tests!(fixture);
}

// === layout, pagination, tolerance ===

#[tokio::test]
async fn parameters_live_at_the_documented_names() {
    let moto = start_moto().await;
    let registry = registry_at(&moto.endpoint(), "/colony", DEFAULT_CACHE_TTL).await;
    assert_eq!(registry.coordinator_name(), "/colony/coordinator");
    assert_eq!(
        registry.backend_name("backend_9000").unwrap(),
        "/colony/backends/backend_9000"
    );
    assert_eq!(
        registry.describe(),
        format!(
            "ssm registry at /colony (region us-east-1, endpoint {})",
            moto.endpoint()
        )
    );
    registry.register_coordinator(v4(8082)).await.unwrap();
    registry
        .register_backend("backend_9000", v4(9000))
        .await
        .unwrap();

    let client = raw_client(&moto.endpoint());
    for (name, port) in [
        ("/colony/coordinator", 8082),
        ("/colony/backends/backend_9000", 9000),
    ] {
        let parameter = client
            .get_parameter()
            .name(name)
            .send()
            .await
            .unwrap()
            .parameter
            .unwrap();
        assert_eq!(parameter.r#type, Some(ParameterType::String), "{name}");
        assert_eq!(
            parameter.value.as_deref(),
            Some(
                format!(
                    r#"{{"ip":"127.0.0.1","internal_port":{port},"http_port":{},"mgmt_port":{}}}"#,
                    port + 1,
                    port + 2
                )
                .as_str()
            )
        );
    }
}

#[tokio::test]
async fn every_page_is_followed_to_the_end() {
    let moto = start_moto().await;
    // 25 is the acceptance case (three pages of at most 10); 10 and 20 end on a full page,
    // after which moto sends an empty last page without a token.
    for count in [0u16, 1, 10, 20, 25] {
        let prefix = format!("/pages-{count}");
        let writer = registry_at(&moto.endpoint(), &prefix, DEFAULT_CACHE_TTL).await;
        for n in 0..count {
            writer
                .register_backend(&format!("backend_{n:03}"), v4(9000 + n))
                .await
                .unwrap();
        }
        // A second instance, so nothing comes from the writer's own state.
        let reader = registry_at(&moto.endpoint(), &prefix, DEFAULT_CACHE_TTL).await;
        let found = reader.discover_backends().await.unwrap();
        let expected: Vec<(String, NodeAddress)> = (0..count)
            .map(|n| (format!("backend_{n:03}"), v4(9000 + n)))
            .collect();
        assert_eq!(found, expected, "{count} backends");
    }
}

#[tokio::test]
async fn entries_that_are_not_addresses_are_skipped_with_a_warning_naming_them() {
    let logs = warnings();
    let moto = start_moto().await;
    let registry = registry_at(&moto.endpoint(), "/tolerant", Duration::ZERO).await;
    registry.register_backend("good", v4(9000)).await.unwrap();
    let client = raw_client(&moto.endpoint());
    let bad = [
        (
            "/tolerant/backends/truncated",
            r#"{"ip":"127.0.0.1","internal_po"#,
        ),
        ("/tolerant/backends/not_json", "hello"),
        (
            "/tolerant/backends/extra_field",
            r#"{"ip":"127.0.0.1","internal_port":1,"http_port":2,"mgmt_port":3,"secret":"x"}"#,
        ),
        (
            "/tolerant/backends/bad_ip",
            r#"{"ip":"localhost","internal_port":1,"http_port":2,"mgmt_port":3}"#,
        ),
        ("/tolerant/coordinator", r#"{"ip":"#),
    ];
    for (name, value) in bad {
        client
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .unwrap();
    }
    // Deeper levels are not backends and are not read at all.
    client
        .put_parameter()
        .name("/tolerant/backends/nested/deeper")
        .value("{}")
        .r#type(ParameterType::String)
        .send()
        .await
        .unwrap();

    assert_eq!(
        registry.discover_backends().await.unwrap(),
        vec![("good".to_owned(), v4(9000))]
    );
    assert_eq!(registry.discover_coordinator().await.unwrap(), None);
    let text = logs.text();
    for (name, _) in bad {
        assert!(
            text.contains(&format!("parameter={name} ")),
            "no warning names {name}:\n{text}"
        );
    }
    assert!(!text.contains("/tolerant/backends/nested"), "{text}");

    // Registering again repairs the coordinator.
    registry.register_coordinator(v4(8082)).await.unwrap();
    assert_eq!(
        registry.discover_coordinator().await.unwrap(),
        Some(v4(8082))
    );
}

// === writes and the cache ===

#[tokio::test]
async fn the_same_address_again_is_not_written() {
    let moto = start_moto().await;
    let registry = registry_at(&moto.endpoint(), "/colony", DEFAULT_CACHE_TTL).await;
    let client = raw_client(&moto.endpoint());
    let version = || async {
        client
            .get_parameter()
            .name("/colony/coordinator")
            .send()
            .await
            .unwrap()
            .parameter
            .unwrap()
            .version
    };
    registry.register_coordinator(v4(8082)).await.unwrap();
    assert_eq!(version().await, 1);
    // A restart at the same address, or a retry: no write.
    registry.register_coordinator(v4(8082)).await.unwrap();
    let other = registry_at(&moto.endpoint(), "/colony", DEFAULT_CACHE_TTL).await;
    other.register_coordinator(v4(8082)).await.unwrap();
    assert_eq!(version().await, 1);
    // A new address is written.
    registry.register_coordinator(v4(18082)).await.unwrap();
    assert_eq!(version().await, 2);
}

#[tokio::test]
async fn discovery_is_cached_briefly_and_own_writes_show_at_once() {
    const TTL: Duration = Duration::from_millis(700);
    let moto = start_moto().await;
    // The reader's cache runs on a clock that moves only when told, so what it holds does not
    // depend on how long moto takes to answer.
    let clock = ManualClock::new();
    let options = SsmOptions::new("/cached")
        .with_cache_ttl(TTL)
        .with_clock(clock.clone());
    let reader = SsmClusterRegistry::from_sdk_config(&sdk_config(&moto.endpoint()), options)
        .await
        .unwrap();
    let writer = registry_at(&moto.endpoint(), "/cached", TTL).await;

    assert!(reader.discover_backends().await.unwrap().is_empty());
    assert_eq!(reader.discover_coordinator().await.unwrap(), None);
    writer.register_backend("b1", v4(9000)).await.unwrap();
    writer.register_coordinator(v4(8082)).await.unwrap();
    // Another node's write is not seen while the cache is fresh, up to the last moment...
    clock.advance(TTL - Duration::from_millis(1));
    assert!(reader.discover_backends().await.unwrap().is_empty());
    assert_eq!(reader.discover_coordinator().await.unwrap(), None);
    // ...and is seen once it is not.
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        reader.discover_backends().await.unwrap(),
        vec![("b1".to_owned(), v4(9000))]
    );
    assert_eq!(reader.discover_coordinator().await.unwrap(), Some(v4(8082)));

    // A read asked for now (a colony start) sees another node's write while the cache is
    // fresh, and what it read is the cache from then on.
    writer.register_backend("b0", v4(8990)).await.unwrap();
    assert_eq!(reader.discover_backends().await.unwrap().len(), 1);
    let now = reader.discover_backends_now().await.unwrap();
    assert_eq!(
        now,
        vec![("b0".to_owned(), v4(8990)), ("b1".to_owned(), v4(9000))]
    );
    assert_eq!(reader.discover_backends().await.unwrap(), now);
    writer.unregister_backend("b0").await.unwrap();
    clock.advance(TTL);

    // The reader's own writes are seen at once, cache or not.
    reader.register_backend("b2", v4(9010)).await.unwrap();
    assert_eq!(reader.discover_backends().await.unwrap().len(), 2);
    reader.unregister_coordinator().await.unwrap();
    assert_eq!(reader.discover_coordinator().await.unwrap(), None);
}

// === failures ===

#[tokio::test]
async fn an_unreachable_endpoint_is_named_with_what_to_set() {
    let port = free_port();
    let endpoint = moto::endpoint(port);
    let registry = registry_at(&endpoint, "/colony", DEFAULT_CACHE_TTL).await;
    let started = Instant::now();
    let err = ssm_error(registry.register_coordinator(v4(8082)).await.unwrap_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.cause(), Some(&SsmCause::Unreachable), "{err}");
    assert!(!err.is_permanent(), "a server may come back: retry");
    let msg = err.to_string();
    for needle in [
        "endpoint unreachable",
        "/colony/coordinator",
        endpoint.as_str(),
        "AWS_ENDPOINT_URL_SSM",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    let err = ssm_error(registry.discover_backends().await.unwrap_err());
    assert_eq!(err.cause(), Some(&SsmCause::Unreachable), "{err}");
}

/// One scripted answer: HTTP status and the `__type` of an awsJson error, or a success body.
#[derive(Clone)]
enum Answer {
    Ok(&'static str),
    Error(u16, &'static str),
}

/// A fake SSM endpoint on loopback: answers each call by its `X-Amz-Target` operation from a
/// script, repeating the script's last answer, and counts the calls.
struct FakeSsm {
    endpoint: String,
    calls: Arc<RwLock<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSsm {
    async fn start(script: HashMap<&'static str, Vec<Answer>>) -> FakeSsm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let calls: Arc<RwLock<HashMap<String, usize>>> = Arc::default();
        let script = Arc::new(script);
        let task = tokio::spawn({
            let calls = Arc::clone(&calls);
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (calls, script) = (Arc::clone(&calls), Arc::clone(&script));
                    tokio::spawn(async move {
                        let mut stream = BufReader::new(stream);
                        while let Some(op) = read_request(&mut stream).await {
                            let n = {
                                let mut calls = calls.write().unwrap();
                                let n = calls.entry(op.clone()).or_default();
                                *n += 1;
                                *n
                            };
                            let answers = script.get(op.as_str()).cloned().unwrap_or_default();
                            let answer = answers
                                .get(n - 1)
                                .or(answers.last())
                                .cloned()
                                .unwrap_or(Answer::Error(400, "UnknownOperationException"));
                            let (status, body) = match answer {
                                Answer::Ok(body) => (200, body.to_owned()),
                                Answer::Error(status, code) => (
                                    status,
                                    format!(r#"{{"__type":"{code}","message":"scripted {code}"}}"#),
                                ),
                            };
                            let response = format!(
                                "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\n\
                                 Content-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if stream
                                .get_mut()
                                .write_all(response.as_bytes())
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                }
            }
        });
        FakeSsm {
            endpoint,
            calls,
            task,
        }
    }

    fn calls(&self, op: &str) -> usize {
        self.calls.read().unwrap().get(op).copied().unwrap_or(0)
    }
}

impl Drop for FakeSsm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP request; returns its operation (`AmazonSSM.PutParameter` → `PutParameter`).
async fn read_request(stream: &mut BufReader<tokio::net::TcpStream>) -> Option<String> {
    let mut op = String::new();
    let mut length = 0usize;
    let mut first = true;
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            if first {
                continue;
            }
            break;
        }
        first = false;
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "x-amz-target" => {
                    op = value.trim().trim_start_matches("AmazonSSM.").to_owned();
                }
                "content-length" => length = value.trim().parse().ok()?,
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(op)
}

const NOT_FOUND: Answer = Answer::Error(400, "ParameterNotFound");
const THROTTLED: Answer = Answer::Error(400, "ThrottlingException");
const PUT_OK: Answer = Answer::Ok(r#"{"Version":1,"Tier":"Standard"}"#);

#[tokio::test]
async fn throttling_and_server_errors_are_retried_with_backoff_until_they_clear() {
    let fake = FakeSsm::start(HashMap::from([
        // A 5xx is retried the same way.
        (
            "GetParameter",
            vec![Answer::Error(500, "InternalServerError"), NOT_FOUND],
        ),
        (
            "PutParameter",
            vec![THROTTLED, THROTTLED, THROTTLED, PUT_OK],
        ),
    ]))
    .await;
    let registry = registry_at(&fake.endpoint, "/colony", DEFAULT_CACHE_TTL).await;
    let started = Instant::now();
    registry.register_coordinator(v4(8082)).await.unwrap();
    assert_eq!(fake.calls("GetParameter"), 2);
    assert_eq!(fake.calls("PutParameter"), 4);
    // Waits of about 100 ms (the 5xx), then 100, 200 and 400 ms, each jittered down to no
    // less than half.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn throttling_that_never_clears_is_reported_as_such() {
    let fake = FakeSsm::start(HashMap::from([
        ("GetParameter", vec![NOT_FOUND]),
        ("PutParameter", vec![THROTTLED]),
        ("GetParametersByPath", vec![THROTTLED]),
    ]))
    .await;
    let registry = registry_at(&fake.endpoint, "/colony", DEFAULT_CACHE_TTL).await;
    let err = ssm_error(registry.register_coordinator(v4(8082)).await.unwrap_err());
    assert_eq!(err.cause(), Some(&SsmCause::Throttled), "{err}");
    assert!(!err.is_permanent());
    assert_eq!(fake.calls("PutParameter"), 6, "every attempt was made");
    let msg = err.to_string();
    assert!(msg.contains("throttled by SSM"), "{msg}");
    assert!(msg.contains("PutParameter"), "{msg}");
    let err = ssm_error(registry.discover_backends().await.unwrap_err());
    assert_eq!(err.cause(), Some(&SsmCause::Throttled), "{err}");
}

#[tokio::test]
async fn access_denied_and_refused_credentials_are_reported_at_once() {
    let cases = [
        (
            "AccessDeniedException",
            SsmCause::AccessDenied,
            "ssm:PutParameter",
        ),
        (
            "UnrecognizedClientException",
            SsmCause::Credentials,
            "AWS_ACCESS_KEY_ID",
        ),
        (
            "ExpiredTokenException",
            SsmCause::Credentials,
            "AWS_SESSION_TOKEN",
        ),
    ];
    for (code, cause, hint) in cases {
        let fake = FakeSsm::start(HashMap::from([(
            "GetParameter",
            vec![Answer::Error(400, code)],
        )]))
        .await;
        let registry = registry_at(&fake.endpoint, "/colony", DEFAULT_CACHE_TTL).await;
        let err = ssm_error(registry.register_coordinator(v4(8082)).await.unwrap_err());
        assert_eq!(err.cause(), Some(&cause), "{code}: {err}");
        assert_eq!(fake.calls("GetParameter"), 1, "{code} is not retried here");
        let msg = err.to_string();
        assert!(msg.contains(hint), "{code}: {msg}");
        assert!(msg.contains(code), "{code}: {msg}");
    }
}

#[tokio::test]
async fn a_page_that_fails_midway_returns_what_was_read() {
    let logs = warnings();
    let fake = FakeSsm::start(HashMap::from([(
        "GetParametersByPath",
        vec![
            Answer::Ok(
                r#"{"Parameters":[{"Name":"/midway/backends/b1","Type":"String","Value":"{\"ip\":\"127.0.0.1\",\"internal_port\":9000,\"http_port\":9001,\"mgmt_port\":9002}","Version":1}],"NextToken":"t1"}"#,
            ),
            Answer::Error(400, "AccessDeniedException"),
        ],
    )]))
    .await;
    let registry = registry_at(&fake.endpoint, "/midway", DEFAULT_CACHE_TTL).await;
    assert_eq!(
        registry.discover_backends().await.unwrap(),
        vec![("b1".to_owned(), v4(9000))]
    );
    assert!(logs.text().contains("SSM discovery stopped early"));
    // A partial list is not cached: the next discovery asks again (and, its first page now
    // refused, fails).
    assert!(registry.discover_backends().await.is_err());
    assert_eq!(fake.calls("GetParametersByPath"), 3);
}

// === configuration from the environment ===

const CHILD: &str = "COLONY_SSM_FROM_ENV_CHILD";

/// The child half of the `from_env` tests, which run it with `--ignored --exact`: opens the
/// registry from its environment, prints the outcome on one line, and round-trips an entry if
/// it opened. Ignored so that it is not a test of its own; run without a parent it fails
/// rather than pass having checked nothing.
#[tokio::test]
#[ignore = "child process of the from_env tests, which run it"]
async fn from_env_child() {
    assert!(
        std::env::var(CHILD).is_ok(),
        "run only by the from_env tests, which set {CHILD}"
    );
    let started = Instant::now();
    match SsmClusterRegistry::from_env(SsmOptions::new("/from-env")).await {
        Ok(registry) => {
            registry.register_backend("b1", v4(9000)).await.unwrap();
            let found = registry.discover_backends().await.unwrap();
            assert_eq!(found, vec![("b1".to_owned(), v4(9000))]);
            registry.unregister_backend("b1").await.unwrap();
            println!("CHILD-RESULT ok {}", registry.describe());
        }
        Err(e) => println!("CHILD-RESULT err ms={} {e}", started.elapsed().as_millis()),
    }
}

/// Runs [`from_env_child`] in a child process whose environment is exactly `env`.
fn run_child(env: &[(&str, String)]) -> String {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "from_env_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .env(CHILD, "1")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split_once("CHILD-RESULT ").map(|(_, result)| result))
        .unwrap_or_else(|| panic!("no result line:\n{stdout}"))
        .to_owned()
}

/// A loopback listener standing in for the instance-metadata service: counts connections.
fn fake_imds() -> (String, Arc<AtomicUsize>) {
    let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (url, count)
}

fn without<'a>(env: &[(&'a str, String)], drop: &[&str]) -> Vec<(&'a str, String)> {
    env.iter()
        .filter(|(k, _)| !drop.contains(k))
        .cloned()
        .collect()
}

fn set(env: &mut Vec<(&str, String)>, key: &'static str, value: &str) {
    env.retain(|(k, _)| *k != key);
    env.push((key, value.to_owned()));
}

#[tokio::test]
async fn the_standard_aws_environment_configures_it() {
    let moto = start_moto().await;
    let result = tokio::task::spawn_blocking({
        let env = moto.aws_env();
        move || run_child(&env)
    })
    .await
    .unwrap();
    assert_eq!(
        result,
        format!(
            "ok ssm registry at /from-env (region us-east-1, endpoint {})",
            moto.endpoint()
        )
    );
}

#[tokio::test]
async fn missing_credentials_fail_fast_and_ask_nobody() {
    let (imds, imds_connections) = fake_imds();
    let mut env = without(
        &moto::aws_env(free_port()),
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
    );
    set(&mut env, "AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds);
    let mut variants = vec![env.clone()];
    // Off EC2, even with the metadata service not disabled, it is not asked.
    if !on_ec2() {
        variants.push(without(&env, &["AWS_EC2_METADATA_DISABLED"]));
    }
    for env in variants {
        let result = tokio::task::spawn_blocking(move || run_child(&env))
            .await
            .unwrap();
        assert!(result.starts_with("err "), "{result}");
        for needle in [
            "SSM registry",
            "no AWS credentials",
            "AWS_ACCESS_KEY_ID",
            "AWS_PROFILE",
        ] {
            assert!(result.contains(needle), "{needle:?} not in {result}");
        }
        assert!(elapsed_ms(&result) < 2000, "not fast: {result}");
    }
    assert_eq!(imds_connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_missing_region_fails_fast_and_says_what_to_set() {
    let env = without(
        &moto::aws_env(free_port()),
        &["AWS_REGION", "AWS_DEFAULT_REGION"],
    );
    let result = tokio::task::spawn_blocking(move || run_child(&env))
        .await
        .unwrap();
    assert!(result.starts_with("err "), "{result}");
    assert!(result.contains("no AWS region"), "{result}");
    assert!(result.contains("set AWS_REGION"), "{result}");
    assert!(elapsed_ms(&result) < 2000, "not fast: {result}");
}

fn elapsed_ms(result: &str) -> u128 {
    result
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))
        .unwrap()
        .parse()
        .unwrap()
}

/// What the registry's EC2 check looks at, so this test knows what to expect of it.
fn on_ec2() -> bool {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    read("/sys/devices/virtual/dmi/id/sys_vendor").trim() == "Amazon EC2"
        || read("/sys/devices/virtual/dmi/id/board_vendor").trim() == "Amazon EC2"
        || read("/sys/hypervisor/uuid")
            .to_ascii_lowercase()
            .starts_with("ec2")
}
