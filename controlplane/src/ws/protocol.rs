//! The `/ws` wire format (DESIGN §10): parsing requests, shaping responses and events.
//!
//! Pure functions of text and values; no sockets. Every bad input becomes a [`WsError`] that
//! the connection answers with an error response and keeps going.

use serde::Serialize;
use serde_json::{json, Map, Value};

/// Longest request id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// The kinds of pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The full state: sent on connect, and again if the stream had to be resynchronized.
    RegistryLoaded,
    /// A node changed health state, or a managed process started or stopped.
    ServiceStateChanged,
    /// A node registered with new ports.
    EndpointUpdated,
    /// A node's heartbeat (rate-limited per node).
    HealthCheckResult,
    /// The colony's tick, population and ticks/s (a few times a second at most).
    ColonyProgress,
    /// A step of a package deployment (DESIGN §16).
    DeploymentProgress,
    /// The colony was placed again: backends lost (who, which shards moved where, how many
    /// ticks were redone), a rebalance, or a restarted coordinator taking it over.
    ColonyRecovery,
}

impl EventKind {
    /// Every kind, in wire order.
    pub const ALL: [EventKind; 7] = [
        EventKind::RegistryLoaded,
        EventKind::ServiceStateChanged,
        EventKind::EndpointUpdated,
        EventKind::HealthCheckResult,
        EventKind::ColonyProgress,
        EventKind::DeploymentProgress,
        EventKind::ColonyRecovery,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RegistryLoaded => "registry_loaded",
            EventKind::ServiceStateChanged => "service_state_changed",
            EventKind::EndpointUpdated => "endpoint_updated",
            EventKind::HealthCheckResult => "health_check_result",
            EventKind::ColonyProgress => "colony_progress",
            EventKind::DeploymentProgress => "deployment_progress",
            EventKind::ColonyRecovery => "colony_recovery",
        }
    }

    /// The kind with this wire name.
    pub fn parse(name: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A name in a subscription that is not an event kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {name:?}; known: {}", EventSet::all().names().join(", "))]
pub struct UnknownEventType {
    /// The name as given.
    pub name: String,
}

/// A set of event kinds, as one connection's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSet(u32);

impl EventSet {
    /// Every kind.
    pub fn all() -> Self {
        EventSet(EventKind::ALL.iter().fold(0, |m, k| m | k.bit()))
    }

    /// No kind.
    pub fn none() -> Self {
        EventSet(0)
    }

    /// From the raw bits of [`EventSet::bits`].
    pub fn from_bits(bits: u32) -> Self {
        EventSet(bits & Self::all().0)
    }

    /// The raw bits, for sharing through an atomic.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// True if `kind` is in the set.
    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Adds `kinds`.
    pub fn with(self, kinds: EventSet) -> Self {
        EventSet(self.0 | kinds.0)
    }

    /// Removes `kinds`.
    pub fn without(self, kinds: EventSet) -> Self {
        EventSet(self.0 & !kinds.0)
    }

    /// Wire names of the kinds in the set.
    pub fn names(self) -> Vec<&'static str> {
        EventKind::ALL
            .into_iter()
            .filter(|k| self.contains(*k))
            .map(EventKind::as_str)
            .collect()
    }

    /// Parses a list of names (`"*"` means every kind).
    ///
    /// # Errors
    /// The first name that is not an event kind.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, UnknownEventType> {
        names.into_iter().try_fold(EventSet::none(), |set, name| {
            if name == "*" {
                return Ok(EventSet::all());
            }
            EventKind::parse(name)
                .map(|k| EventSet(set.0 | k.bit()))
                .ok_or_else(|| UnknownEventType {
                    name: name.to_owned(),
                })
        })
    }
}

/// The actions a client may request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Every service.
    ListServices,
    /// One service, by `name`.
    GetService,
    /// Every endpoint of every service.
    ListEndpoints,
    /// `start`, `stop` or `restart` a managed process.
    ServiceAction,
    /// Deploy an uploaded package to a node.
    DeployPackage,
    /// Receive more event kinds.
    Subscribe,
    /// Receive fewer event kinds.
    Unsubscribe,
    /// Present the operator token (`params.token`): the connection may change state from
    /// then on (DESIGN §13).
    Auth,
}

impl Action {
    const ALL: [(&'static str, Action); 8] = [
        ("list_services", Action::ListServices),
        ("get_service", Action::GetService),
        ("list_endpoints", Action::ListEndpoints),
        ("service_action", Action::ServiceAction),
        ("deploy_package", Action::DeployPackage),
        ("subscribe", Action::Subscribe),
        ("unsubscribe", Action::Unsubscribe),
        ("auth", Action::Auth),
    ];

    fn parse(name: &str) -> Option<Action> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// The wire name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("?", |(n, _)| n)
    }

    fn known() -> String {
        Self::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The client's correlation id (a string or a number), echoed in the response.
    pub id: Value,
    /// What to do.
    pub action: Action,
    /// Its parameters (an empty object when absent).
    pub params: Map<String, Value>,
}

/// Why a request failed, with the id to answer it under (`null` when there is none).
#[derive(Debug, Clone, PartialEq)]
pub struct WsError {
    /// The request's id, or `null`.
    pub id: Value,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// What was wrong, in words.
    pub message: String,
}

impl WsError {
    /// An error answering request `id`.
    pub fn new(id: Value, code: &'static str, message: impl Into<String>) -> Self {
        WsError {
            id,
            code,
            message: message.into(),
        }
    }

    /// The response text.
    pub fn to_text(&self) -> String {
        json!({
            "id": self.id,
            "type": "response",
            "error": { "code": self.code, "message": self.message },
        })
        .to_string()
    }
}

/// Parses one text message into a request.
///
/// # Errors
/// `malformed_json`, `invalid_request` (not an object, or `type` is not `request`),
/// `missing_id`, `invalid_id`, `missing_action`, `unknown_action`, `invalid_params`.
pub fn parse_request(text: &str) -> Result<Request, WsError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        WsError::new(
            Value::Null,
            "malformed_json",
            format!("malformed JSON: {e}"),
        )
    })?;
    let Value::Object(mut object) = value else {
        return Err(WsError::new(
            Value::Null,
            "invalid_request",
            "a request must be a JSON object {\"id\",\"type\":\"request\",\"action\",\"params\"}",
        ));
    };
    let id = match object.remove("id") {
        None | Some(Value::Null) => {
            return Err(WsError::new(
                Value::Null,
                "missing_id",
                "the request has no \"id\"; responses are matched to requests by it",
            ))
        }
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => Value::String(s),
        Some(n @ Value::Number(_)) => n,
        Some(_) => {
            return Err(WsError::new(
                Value::Null,
                "invalid_id",
                format!("\"id\" must be a number or a string of 1 to {MAX_ID_LEN} bytes"),
            ))
        }
    };
    match object.get("type").and_then(Value::as_str) {
        Some("request") => {}
        other => {
            return Err(WsError::new(
                id,
                "invalid_request",
                format!(
                    "\"type\" must be \"request\", not {}",
                    other.map_or_else(|| "missing".to_owned(), |t| format!("{t:?}"))
                ),
            ))
        }
    }
    let action = match object.get("action") {
        None | Some(Value::Null) => {
            return Err(WsError::new(
                id,
                "missing_action",
                format!("the request has no \"action\"; known: {}", Action::known()),
            ))
        }
        Some(Value::String(name)) => Action::parse(name).ok_or_else(|| {
            WsError::new(
                id.clone(),
                "unknown_action",
                format!("unknown action {name:?}; known: {}", Action::known()),
            )
        })?,
        Some(_) => {
            return Err(WsError::new(
                id,
                "invalid_request",
                "\"action\" must be a string",
            ))
        }
    };
    let params = match object.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => params,
        Some(_) => {
            return Err(WsError::new(
                id,
                "invalid_params",
                "\"params\" must be an object",
            ))
        }
    };
    Ok(Request { id, action, params })
}

/// A successful response's text.
pub fn response_text(id: &Value, data: &Value) -> String {
    json!({ "id": id, "type": "response", "data": data }).to_string()
}

/// An event's text: `{"type":"event","event","seq","data"}`.
pub fn event_text(kind: EventKind, seq: u64, data: &Value) -> String {
    json!({ "type": "event", "event": kind.as_str(), "seq": seq, "data": data }).to_string()
}

/// A string parameter.
///
/// # Errors
/// `invalid_params` naming it when it is missing or not a non-empty string.
pub fn string_param<'a>(request: &'a Request, name: &str) -> Result<&'a str, WsError> {
    match request.params.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(WsError::new(
            request.id.clone(),
            "invalid_params",
            format!("params.{name} must be a non-empty string"),
        )),
        None => Err(WsError::new(
            request.id.clone(),
            "invalid_params",
            format!("params.{name} is required"),
        )),
    }
}

/// The `events` parameter of subscribe/unsubscribe; absent means every kind.
///
/// # Errors
/// `invalid_params` when it is not a list of known event types.
pub fn events_param(request: &Request) -> Result<EventSet, WsError> {
    let bad = |message: String| WsError::new(request.id.clone(), "invalid_params", message);
    match request.params.get("events") {
        None => Ok(EventSet::all()),
        Some(Value::Array(items)) => {
            let names: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let names =
                names.ok_or_else(|| bad("params.events must be a list of strings".into()))?;
            EventSet::parse(names).map_err(|e| bad(format!("params.events: {e}")))
        }
        Some(_) => Err(bad("params.events must be a list of event types".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> WsError {
        parse_request(text).unwrap_err()
    }

    #[test]
    fn a_good_request_parses() {
        let r = parse_request(
            r#"{"id":"1","type":"request","action":"get_service","params":{"name":"b"}}"#,
        )
        .unwrap();
        assert_eq!(r.id, json!("1"));
        assert_eq!(r.action, Action::GetService);
        assert_eq!(string_param(&r, "name").unwrap(), "b");
        let r = parse_request(r#"{"id":7,"type":"request","action":"list_services"}"#).unwrap();
        assert_eq!((r.id, r.params.len()), (json!(7), 0));
    }

    #[test]
    fn every_bad_request_names_its_fault_and_keeps_the_id_it_has() {
        let cases = [
            ("{not json", Value::Null, "malformed_json"),
            ("[1,2]", Value::Null, "invalid_request"),
            (
                r#"{"type":"request","action":"list_services"}"#,
                Value::Null,
                "missing_id",
            ),
            (
                r#"{"id":{},"type":"request","action":"list_services"}"#,
                Value::Null,
                "invalid_id",
            ),
            (
                r#"{"id":"a","action":"list_services"}"#,
                json!("a"),
                "invalid_request",
            ),
            (
                r#"{"id":"a","type":"request"}"#,
                json!("a"),
                "missing_action",
            ),
            (
                r#"{"id":"a","type":"request","action":"fly"}"#,
                json!("a"),
                "unknown_action",
            ),
            (
                r#"{"id":"a","type":"request","action":"list_services","params":3}"#,
                json!("a"),
                "invalid_params",
            ),
        ];
        for (text, id, code) in cases {
            let e = err(text);
            assert_eq!((e.id.clone(), e.code), (id, code), "{text}: {}", e.message);
            let answer: Value = serde_json::from_str(&e.to_text()).unwrap();
            assert_eq!(answer["type"], "response");
            assert_eq!(answer["error"]["code"], code);
        }
        assert!(err(r#"{"id":"a","type":"request","action":"fly"}"#)
            .message
            .contains("list_services"));
    }

    #[test]
    fn event_sets_parse_and_combine() {
        let set = EventSet::parse(["service_state_changed", "colony_progress"]).unwrap();
        assert!(set.contains(EventKind::ColonyProgress));
        assert!(!set.contains(EventKind::HealthCheckResult));
        assert_eq!(EventSet::parse(["*"]).unwrap(), EventSet::all());
        let unknown = EventSet::parse(["nope"]).unwrap_err();
        assert_eq!(unknown.name, "nope");
        assert!(unknown.to_string().contains("nope"));
        let fewer = EventSet::all().without(set);
        assert!(!fewer.contains(EventKind::ServiceStateChanged));
        assert_eq!(EventSet::from_bits(fewer.with(set).bits()), EventSet::all());
        assert_eq!(EventSet::all().names().len(), EventKind::ALL.len());
    }
}
