//! The AWS configuration of the SSM registry: the HTTPS client, the region and the credential
//! chain (instance metadata only on EC2), the credentials check, the configured endpoint, and
//! SSM's rules for the parameter prefix.

use std::time::Duration;

use aws_config::environment::{
    EnvironmentVariableCredentialsProvider, EnvironmentVariableRegionProvider,
};
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::{ProfileFileCredentialsProvider, ProfileFileRegionProvider};
use aws_config::provider_config::ProviderConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ssm::config::{ProvideCredentials, SharedHttpClient};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_types::service_config::ServiceConfigKey;

use super::error::one_line;
use super::{SsmError, MAX_PREFIX_LEN};
use crate::registry::RegistryError;

/// SSM hierarchies are at most 15 levels deep; `backends/{id}` takes two.
const MAX_PREFIX_LEVELS: usize = 13;
/// How long resolving credentials may take at construction.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(5);

/// The standard AWS configuration: region from `AWS_REGION`, `AWS_DEFAULT_REGION` or the
/// profile, and the standard credential chain (see [`credentials_chain`]).
///
/// # Errors
/// No region is configured ([`SsmError::Config`]).
pub(super) async fn load_from_env() -> Result<SdkConfig, RegistryError> {
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
    Ok(aws_config::defaults(BehaviorVersion::latest())
        .region(region.clone())
        .credentials_provider(credentials_chain(&region, &http, imds))
        .http_client(http)
        .load()
        .await)
}

/// The one HTTPS client: hyper with rustls on ring (plain HTTP works too, for local servers).
pub(super) fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The standard credential sources in the standard order, with the instance-metadata one only
/// where it is allowed.
pub(super) fn credentials_chain(
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
pub(super) fn instance_metadata_allowed() -> bool {
    let setting = std::env::var("AWS_EC2_METADATA_DISABLED").ok();
    imds_allowed(setting.as_deref(), looks_like_ec2)
}

pub(super) fn imds_allowed(disabled: Option<&str>, on_ec2: impl FnOnce() -> bool) -> bool {
    match disabled.map(str::trim) {
        Some(v) if v.eq_ignore_ascii_case("true") => false,
        Some(v) if v.eq_ignore_ascii_case("false") => true,
        _ => on_ec2(),
    }
}

/// Nitro instances name the vendor in DMI; Xen ones have a hypervisor UUID starting `ec2`.
pub(super) fn looks_like_ec2() -> bool {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    read("/sys/devices/virtual/dmi/id/sys_vendor").trim() == "Amazon EC2"
        || read("/sys/devices/virtual/dmi/id/board_vendor").trim() == "Amazon EC2"
        || read("/sys/hypervisor/uuid")
            .to_ascii_lowercase()
            .starts_with("ec2")
}

/// Resolves the credentials once, so a missing configuration fails now and clearly rather than
/// on every later call.
pub(super) async fn check_credentials(sdk: &SdkConfig) -> Result<(), RegistryError> {
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
pub(super) fn configured_endpoint(sdk: &SdkConfig) -> Option<String> {
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
pub(super) fn validate_prefix(prefix: &str) -> Result<(), RegistryError> {
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
