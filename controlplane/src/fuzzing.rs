//! Entry points of the fuzz campaign over what the HTTP planes accept from the network (the
//! `fuzz/` crate's targets `http_bodies`, `ws_request` and `ws_channel_frames`) and of the test that replays its
//! corpus (`tests/fuzz_corpus.rs`), so both run exactly the same code.
//!
//! [`http_bodies`] takes one body of a node or operator route, the route picked by the
//! input's first byte ([`Route`]), and runs it through the same extractor, parser and checks
//! as the route: `ApiJson`/[`parse_json`](crate::error::parse_json), then `validate`, then
//! the domain step that takes the value (the health tracker, the token audit, the init
//! token check and the first-init topology checks, the colony-start placement). Signatures
//! are not fuzzed (a fuzzer cannot forge an HMAC): a body is judged as if its node signed it,
//! which is the harder case, and the init token is signed by this harness so its fields are
//! judged as an authentic coordinator's would be. The heartbeat channel's frames go through
//! the pre-authentication parser of their signature line first.
//!
//! [`ws_request`] takes one `/ws` text message and answers it with the real handler of the
//! management `/ws` ([`crate::ws`]), once as anyone and once as the operator, on a
//! coordinator with no managed processes and no deploy root (so nothing is started).
//!
//! [`ws_channel_frames`] takes the bytes a client sends on the heartbeat channel after its
//! handshake and decodes them with the channel's frame decoder
//! ([`crate::wire::ws_frame`]), delivered whole and in chunks of a size the input's first
//! byte picks: both must give the same messages and end the same way, every message must be
//! within the limits, decode again the same once re-encoded, and a refusal must carry one of
//! the close codes the decoder promises (1002, 1007, 1009).
//!
//! Besides not panicking, each entry checks what the client is promised: a refused body is
//! a 4xx with a message, never a 5xx; a topology the coordinator places from an accepted
//! start request is one every backend accepts; every `/ws` answer is one JSON response with
//! the request's id and either `data` or an `error` with a code.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue};
use serde::de::DeserializeOwned;
use serde_json::Value;
use shared::secret::ClusterSecret;
use shared::token::{unix_now, TokenIssuer, TokenVerifier};
use shared::topology::{BackendEntry, ClusterTopology, ShardCoord};
use shared::NodeAddress;
use tokio::runtime::Runtime;
use tokio::time::Instant;

use crate::control::colony::RunRequest;
use crate::control::init::first_init_topology;
use crate::coordinator::colony::StartRequest;
use crate::coordinator::error::ColonyError;
use crate::coordinator::health::config::HealthConfig;
use crate::coordinator::health::tracker::HealthTracker;
use crate::coordinator::tokens::TokenAudit;
use crate::error::{parse_json, ApiError, ApiJson};
use crate::operator::{Caller, Denied};
use crate::state::{MgmtState, NodeInfo};
use crate::wire::heartbeat::{Heartbeat, NodeType};
use crate::wire::init::InitColonyShard;
use crate::wire::tokens::TokenReport;
use crate::wire::ws_frame::{encode_masked, Decoder, Message, Opcode, MAX_CONTROL_PAYLOAD};
use crate::ws::protocol::parse_request;
use crate::ws::{Hub, WsLimits};

/// The routes [`http_bodies`] feeds; an input's first byte picks one (modulo their number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /heartbeat` (management).
    Heartbeat,
    /// A frame of the heartbeat channel `/heartbeat/ws`: signature line, newline, body.
    HeartbeatFrame,
    /// `POST /init-colony-shard` (a backend's control plane).
    InitColonyShard,
    /// `POST /colony-start` (the coordinator's control plane).
    ColonyStart,
    /// `POST /colony/run`.
    ColonyRun,
    /// `POST /tokens/report` (management).
    TokenReport,
}

impl Route {
    /// Every route, in the order of their selector byte.
    pub const ALL: [Route; 6] = [
        Route::Heartbeat,
        Route::HeartbeatFrame,
        Route::InitColonyShard,
        Route::ColonyStart,
        Route::ColonyRun,
        Route::TokenReport,
    ];

    /// The route an input's first byte selects.
    pub fn of(selector: u8) -> Route {
        Route::ALL[usize::from(selector) % Route::ALL.len()]
    }
}

/// What a route made of one body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The route would act on it.
    Accepted,
    /// The route refuses it with this client-error status and message.
    Refused {
        /// The HTTP status (always 4xx).
        status: u16,
        /// What the answer says.
        message: String,
    },
}

/// The instance id of the backend that init bodies are sent to.
const BACKEND_ID: &str = "backend_9000";

/// One body for the route its first byte selects; the rest of the input is the body.
///
/// # Panics
/// When a check of the module docs fails: that is a bug the fuzzer found.
pub fn http_bodies(data: &[u8]) -> (Route, Outcome) {
    let Some((&selector, body)) = data.split_first() else {
        return (Route::Heartbeat, heartbeat(data));
    };
    let route = Route::of(selector);
    let _context = fixture().runtime.enter();
    let outcome = match route {
        Route::Heartbeat => heartbeat(body),
        Route::HeartbeatFrame => heartbeat_frame(body),
        Route::InitColonyShard => init(body),
        Route::ColonyStart => colony_start(body),
        Route::ColonyRun => refusal(parse_json::<RunRequest>(body, "run body").map(drop)),
        Route::TokenReport => token_report(body),
    };
    if let Outcome::Refused { status, message } = &outcome {
        assert!(
            (400..500).contains(status),
            "{route:?}: a bad body got status {status}: {message}"
        );
        assert!(!message.is_empty(), "{route:?}: a refusal with no message");
    }
    (route, outcome)
}

/// One `/ws` text message, answered as anyone and then as the operator; the two answers.
///
/// # Panics
/// When an answer breaks the protocol (module docs): that is a bug the fuzzer found.
pub fn ws_request(data: &[u8]) -> Vec<String> {
    // A text frame that is not UTF-8 never reaches the handler: the socket closes with 1007.
    let Ok(text) = std::str::from_utf8(data) else {
        return Vec::new();
    };
    let fixture = fixture();
    let anyone = Caller::Anyone(Denied::TokenRequired);
    let operator = Caller::Operator { token: true };
    [anyone, operator]
        .into_iter()
        .map(|caller| {
            let answer =
                fixture
                    .runtime
                    .block_on(crate::ws::answer_one(&fixture.hub, caller, text));
            check_ws_answer(text, &answer);
            answer
        })
        .collect()
}

fn check_ws_answer(request: &str, answer: &str) {
    let parsed: Value = match serde_json::from_str(answer) {
        Ok(value) => value,
        Err(e) => panic!("the answer is not JSON ({e}): {answer}"),
    };
    assert_eq!(parsed["type"], "response", "not a response: {answer}");
    let id = parse_request(request).map_or_else(|e| e.id, |r| r.id);
    assert_eq!(parsed["id"], id, "the answer's id is not the request's");
    match (parsed.get("data"), parsed.get("error")) {
        (Some(_), None) => {}
        (None, Some(error)) => {
            let code = error["code"].as_str().unwrap_or_default();
            assert!(!code.is_empty(), "an error with no code: {answer}");
            assert!(
                error["message"].as_str().is_some_and(|m| !m.is_empty()),
                "an error with no message: {answer}"
            );
        }
        _ => panic!("neither data nor error, or both: {answer}"),
    }
}

/// What every execution shares: built once, since a fuzzer runs millions of inputs.
struct Fixture {
    runtime: Runtime,
    hub: Hub,
    issuer: TokenIssuer,
    secret: ClusterSecret,
}

/// The largest message [`ws_channel_frames`] decodes: small, so the fuzzer reaches the limit.
pub const WS_FUZZ_MAX_MESSAGE: usize = 512;

/// What [`ws_channel_frames`] made of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameReplay {
    /// The messages decoded, in order: each one's opcode and payload (a close's code and
    /// reason as sent).
    pub messages: Vec<(Opcode, Vec<u8>)>,
    /// The close code the decoder ended the connection with, if it did.
    pub close_code: Option<u16>,
}

/// The bytes after a channel's handshake, decoded (module docs): the first byte picks the
/// chunk size (1 to 256) the rest is delivered in.
///
/// # Panics
/// When the decodings disagree or a message breaks a limit: a bug the fuzzer found.
pub fn ws_channel_frames(data: &[u8]) -> FrameReplay {
    let Some((&chunk, bytes)) = data.split_first() else {
        return FrameReplay {
            messages: Vec::new(),
            close_code: None,
        };
    };
    let whole = decode_frames(&[bytes]);
    let chunks: Vec<&[u8]> = bytes.chunks(usize::from(chunk) + 1).collect();
    assert_eq!(
        whole,
        decode_frames(&chunks),
        "chunks of {} decode differently",
        usize::from(chunk) + 1
    );
    if let Some(code) = whole.close_code {
        assert!(
            matches!(code, 1002 | 1007 | 1009),
            "close code {code} is not one the decoder promises"
        );
    }
    for (opcode, payload) in &whole.messages {
        let limit = match opcode {
            Opcode::Ping | Opcode::Pong | Opcode::Close => MAX_CONTROL_PAYLOAD,
            _ => WS_FUZZ_MAX_MESSAGE,
        };
        assert!(
            payload.len() <= limit,
            "a {opcode:?} of {} bytes",
            payload.len()
        );
        // Re-encoded as a client would, the message decodes to itself.
        let mut frame = Vec::new();
        encode_masked(&mut frame, true, *opcode, [0x5a, 0, 0xff, 7], payload);
        let again = decode_frames(&[&frame]);
        assert_eq!(
            (again.messages.as_slice(), again.close_code),
            (std::slice::from_ref(&(*opcode, payload.clone())), None),
            "a re-encoded {opcode:?} decodes differently"
        );
    }
    whole
}

/// The messages `chunks` decode to, read one after the other as a connection would, and
/// how the decoding ended.
fn decode_frames(chunks: &[&[u8]]) -> FrameReplay {
    let mut decoder = Decoder::new(WS_FUZZ_MAX_MESSAGE);
    let mut buf = Vec::new();
    let mut messages = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(decoded)) => {
                    let consumed = decoded.consumed;
                    messages.extend(decoded.message.map(owned));
                    assert!(consumed > 0 && consumed <= buf.len(), "consumed {consumed}");
                    buf.drain(..consumed);
                }
                Ok(None) => break,
                Err(e) => {
                    return FrameReplay {
                        messages,
                        close_code: Some(e.close_code()),
                    }
                }
            }
        }
    }
    FrameReplay {
        messages,
        close_code: None,
    }
}

/// A message's opcode and payload, owned.
fn owned(message: Message<'_>) -> (Opcode, Vec<u8>) {
    match message {
        Message::Text(t) => (Opcode::Text, t.as_bytes().to_vec()),
        Message::Binary(b) => (Opcode::Binary, b.to_vec()),
        Message::Ping(p) => (Opcode::Ping, p.to_vec()),
        Message::Pong(p) => (Opcode::Pong, p.to_vec()),
        Message::Close(None) => (Opcode::Close, Vec::new()),
        Message::Close(Some(close)) => {
            let mut payload = close.code.to_be_bytes().to_vec();
            payload.extend_from_slice(close.reason.as_bytes());
            (Opcode::Close, payload)
        }
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        #[allow(clippy::expect_used)]
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the fuzz harness needs a runtime");
        #[allow(clippy::expect_used)]
        let secret = ClusterSecret::from_env_value("fuzz-harness-secret-0123456789abcdef")
            .expect("a constant secret of 36 characters is valid");
        let hub = {
            let _context = runtime.enter();
            Hub::new(coordinator_state(&secret), WsLimits::default())
        };
        Fixture {
            runtime,
            hub,
            issuer: TokenIssuer::new(&secret),
            secret,
        }
    })
}

/// A coordinator's management state with one known backend, an operator token, and no
/// managed processes, colony or deploy root: `/ws` actions read it and can start nothing.
fn coordinator_state(secret: &ClusterSecret) -> MgmtState {
    let address = coordinator_address();
    let health = HealthTracker::new(
        HealthConfig::default(),
        Some(("coordinator".into(), address)),
    );
    let metrics = crate::metrics::Metrics::new(
        dataplane::DataPlane::new(dataplane::DataPlaneConfig::default()),
        Some(health.clone()),
    );
    let token = shared::operator::OperatorToken::new("fuzz-operator-token-0123456789", "fuzz")
        .ok()
        .map(std::sync::Arc::new);
    let guard = crate::operator::Access::new(
        crate::operator::OperatorConfig {
            token,
            ..Default::default()
        },
        &metrics,
    )
    .guard("mgmt", address.ip, Some(address.mgmt_port));
    let _ = health.record(
        Heartbeat {
            instance_id: BACKEND_ID.into(),
            node_type: NodeType::Backend,
            address: backend_address(),
            boot_id: "fuzz".into(),
            seq: 1,
            metrics: [("shards".to_owned(), 4.0)].into(),
            leaving: false,
        },
        Instant::now(),
    );
    MgmtState {
        node: NodeInfo::new("coordinator", NodeType::Coordinator, address),
        node_auth: crate::node_auth::NodeAuth::new(
            shared::signing::SignatureVerifier::new(secret),
            metrics.auth_refusals.clone(),
            "mgmt",
        ),
        metrics,
        guard,
        health: Some(health),
        processes: None,
        colony: None,
        deploy: None,
        tasks: tokio_util::task::TaskTracker::new(),
    }
}

fn coordinator_address() -> NodeAddress {
    NodeAddress::new([127, 0, 0, 1].into(), 8082, 8083, 8084)
}

fn backend_address() -> NodeAddress {
    NodeAddress::new([127, 0, 0, 1].into(), 9000, 9001, 9002)
}

fn refusal(result: Result<(), ApiError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Accepted,
        Err(e) => Outcome::Refused {
            status: e.status().as_u16(),
            message: e.to_string(),
        },
    }
}

/// A JSON body as `ApiJson` (and so `SignedJson`, after the MAC) extracts it.
fn api_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut request = Request::new(Body::from(body.to_vec()));
    request.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    futures::executor::block_on(ApiJson::<T>::from_request(request, &())).map(|ApiJson(v)| v)
}

/// `POST /heartbeat`: parsed, validated, recorded by a fresh tracker.
fn heartbeat(body: &[u8]) -> Outcome {
    refusal((|| {
        let heartbeat: Heartbeat = api_json(body)?;
        heartbeat.validate()?;
        record(heartbeat)
    })())
}

/// The channel's direct heartbeat reader must read `body` exactly as `serde_json` does:
/// the same heartbeat (gauges bit for bit) or the same error. A difference is a finding,
/// so it panics.
fn same_as_serde_json(body: &str) {
    match (
        Heartbeat::from_json(body),
        serde_json::from_str::<Heartbeat>(body),
    ) {
        (Ok(ours), Ok(theirs)) => assert!(
            crate::wire::heartbeat_json::same(&ours, &theirs),
            "the direct reader read {ours:?}, serde_json {theirs:?}"
        ),
        (Err(ours), Err(theirs)) => assert_eq!(ours.to_string(), theirs.to_string()),
        (ours, theirs) => panic!("the direct reader gave {ours:?}, serde_json {theirs:?}"),
    }
}

fn record(heartbeat: Heartbeat) -> Result<(), ApiError> {
    let tracker = HealthTracker::new(HealthConfig::default(), None);
    tracker.record(heartbeat, Instant::now())?;
    Ok(())
}

/// A heartbeat channel frame: its signature line through the pre-authentication parser,
/// then its body as the channel parses it once the MAC has passed.
fn heartbeat_frame(frame: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(frame) else {
        return Outcome::Refused {
            status: 400,
            message: "a text frame must be UTF-8 (the channel closes with 1007)".into(),
        };
    };
    let Some((signature, body)) = crate::wire::channel::split(text) else {
        return Outcome::Refused {
            status: 401,
            message: shared::signing::SignatureError::Missing.to_string(),
        };
    };
    // The verdict on a fuzzer's signature is always a refusal (it cannot know the key); what
    // is fuzzed is that the parser, which runs before any key is known, holds.
    let _ = shared::signing::SignatureHeader::parse(signature.as_bytes());
    same_as_serde_json(body);
    refusal((|| {
        let heartbeat = Heartbeat::from_json(body)
            .map_err(|e| ApiError::BadRequest(format!("malformed heartbeat: {e}")))?;
        heartbeat.validate()?;
        record(heartbeat)
    })())
}

/// `POST /init-colony-shard`: parsed, its token signed by this harness and then verified as
/// the backend verifies it, then the first-init topology checks.
fn init(body: &[u8]) -> Outcome {
    let fixture = fixture();
    let request: InitColonyShard = match api_json(body) {
        Ok(request) => request,
        Err(e) => return refusal(Err(e)),
    };
    let mut token = request.token.clone();
    fixture.issuer.sign(&mut token);
    let verifier = TokenVerifier::new(&fixture.secret);
    if let Err(e) = verifier.verify(&token, BACKEND_ID, request.shard, unix_now()) {
        return Outcome::Refused {
            status: e.http_status(),
            message: format!("init token refused: {e}"),
        };
    }
    match first_init_topology(
        request.topology,
        &token.colony_id,
        &backend_address(),
        BACKEND_ID,
        request.shard,
    ) {
        Ok(_) => Outcome::Accepted,
        Err(refusal) => Outcome::Refused {
            status: 400,
            message: refusal.to_string(),
        },
    }
}

/// `POST /colony-start`: parsed and validated as the coordinator does, then placed on three
/// backends; the topology must come back whole through the backends' parser.
fn colony_start(body: &[u8]) -> Outcome {
    refusal((|| {
        let request: StartRequest = if body.iter().all(u8::is_ascii_whitespace) {
            StartRequest::default()
        } else {
            parse_json(body, "colony-start body")?
        };
        let (dims, simulation) = request.validate().map_err(ColonyError::from)?;
        let backends = (0..3u16)
            .map(|k| {
                let port = 9000 + 10 * k;
                BackendEntry::new(
                    format!("backend_{port}"),
                    NodeAddress::new([127, 0, 0, 1].into(), port, port + 1, port + 2),
                )
            })
            .collect();
        let topology = ClusterTopology::place("fuzz-colony", coordinator_address(), backends, dims)
            .and_then(|t| t.with_simulation(simulation))
            .map_err(ColonyError::Placement)?;
        let wire = match serde_json::to_value(&topology) {
            Ok(wire) => wire,
            Err(e) => panic!("a placed topology does not serialize: {e}"),
        };
        let shard = ShardCoord { x: 0, y: 0 };
        let owner = topology
            .backend_of(shard)
            .map(|b| (b.instance_id.clone(), b.address));
        let Some((owner, address)) = owner else {
            panic!("shard (0, 0) of a placed topology has no backend");
        };
        match first_init_topology(Some(wire), "fuzz-colony", &address, &owner, shard) {
            Ok(back) => assert_eq!(back, topology, "the topology changed on its way"),
            Err(e) => panic!("a backend refuses the topology the coordinator placed: {e}"),
        }
        Ok(())
    })())
}

/// `POST /tokens/report`: parsed, validated, applied to a fresh audit.
fn token_report(body: &[u8]) -> Outcome {
    refusal((|| {
        let report: TokenReport = api_json(body)?;
        report.validate()?;
        TokenAudit::with_capacity(64).apply(&report);
        Ok(())
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_refuses_garbage_with_a_client_error() {
        for (selector, route) in Route::ALL.iter().enumerate() {
            let mut input = vec![u8::try_from(selector).unwrap()];
            input.extend_from_slice(b"{not json");
            let (got, outcome) = http_bodies(&input);
            assert_eq!(got, *route);
            assert!(
                matches!(
                    outcome,
                    Outcome::Refused {
                        status: 400..=499,
                        ..
                    }
                ),
                "{route:?}: {outcome:?}"
            );
        }
    }

    #[test]
    fn good_bodies_are_accepted() {
        let heartbeat = br#"{"instance_id":"backend_9010","node_type":"backend","address":{"ip":"127.0.0.1","internal_port":9010,"http_port":9011,"mgmt_port":9012},"boot_id":"b1","seq":1}"#;
        let mut input = vec![0];
        input.extend_from_slice(heartbeat);
        assert_eq!(http_bodies(&input).1, Outcome::Accepted);
        assert_eq!(http_bodies(b"\x03").1, Outcome::Accepted);
        assert_eq!(
            http_bodies(
                br#"{"ticks":5}"#
                    .as_slice()
                    .iter()
                    .copied()
                    .fold(vec![4], |mut v, b| {
                        v.push(b);
                        v
                    })
                    .as_slice()
            )
            .1,
            Outcome::Accepted
        );
    }

    #[test]
    fn ws_requests_are_answered_under_their_id() {
        let answers = ws_request(br#"{"id":"a1","type":"request","action":"list_services"}"#);
        assert_eq!(answers.len(), 2);
        for answer in answers {
            let value: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(value["id"], "a1");
            assert!(value["data"]["services"].is_array(), "{answer}");
        }
        let answers = ws_request(
            br#"{"id":2,"type":"request","action":"service_action","params":{"name":"x","action":"stop"}}"#,
        );
        let anyone: Value = serde_json::from_str(&answers[0]).unwrap();
        assert_eq!(anyone["error"]["code"], "unauthorized");
        assert!(ws_request(b"\xff").is_empty());
    }
}
