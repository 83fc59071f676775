//! Why an SSM call failed ([`SsmCause`], [`SsmError`]) and how an SDK error is read: which
//! failures are retried, and which cause (with its remedy) an operator is told.

use std::error::Error as StdError;
use std::fmt;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};

use super::{ATTEMPTS, MAX_VALUE_BYTES};
use crate::registry::RegistryError;

/// An SDK error of any SSM operation.
pub(super) type SsmSdkError<E> = SdkError<E, aws_sdk_ssm::config::http::HttpResponse>;

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
        /// The endpoint, as the registry's `describe` names it.
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

    pub(super) fn config(problem: impl Into<String>, remedy: impl Into<String>) -> RegistryError {
        RegistryError::Ssm(SsmError::Config {
            problem: problem.into(),
            remedy: remedy.into(),
        })
    }
}

pub(super) fn is_retryable<E: ProvideErrorMetadata>(err: &SsmSdkError<E>) -> bool {
    match err {
        SdkError::ServiceError(service) => {
            service.raw().status().is_server_error()
                || err.code().is_some_and(|c| THROTTLING_CODES.contains(&c))
        }
        _ => false,
    }
}

pub(super) fn classify<E>(err: &SsmSdkError<E>) -> SsmCause
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
pub(super) fn describe_sdk_error<E>(err: &SsmSdkError<E>) -> String
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => one_line(err),
    }
}

/// An error and its sources on one line, each cause once (providers repeat their sources in
/// their own messages).
pub(super) fn one_line(err: &(dyn StdError + 'static)) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
