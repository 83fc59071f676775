//! Layers every HTTP listener gets: a body-size limit, a request timeout, request tracing,
//! panic containment, request counting, and a JSON 404 for unknown routes; and
//! [`serve_limited_on_own_thread`] for the management plane.
//!
//! The layers are stacked into one service and applied with a single `Router::layer`: axum
//! boxes each route once per `layer` call, so five calls meant five boxed futures and five
//! service clones on every request: nearly half of the user time of a heartbeat.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::{not_found, ApiError};
use crate::metrics::HttpMetrics;
use crate::serve::{FdBudget, ServeLimits};

/// Limits of one HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Longest a request may take before it is answered 408.
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Wraps `router` with the standard layers. `plane` labels its request metrics
/// (`control` or `mgmt`).
pub fn harden(
    router: Router,
    limits: HttpLimits,
    metrics: HttpMetrics,
    plane: &'static str,
) -> Router {
    // Outermost first. Every layer sits inside the router, so each sees the matched route.
    let layers = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let path = req
                .extensions()
                .get::<MatchedPath>()
                .map_or(req.uri().path(), |p| p.as_str());
            tracing::debug_span!("http", method = %req.method(), path)
        }))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(CountRequestsLayer { metrics, plane });
    router.fallback(not_found).layer(layers)
}

/// [`serve_limited_on_own_thread`] with the default connection limits and a budget of
/// as many descriptors as connections.
///
/// # Errors
/// As [`serve_limited_on_own_thread`].
pub async fn serve_on_own_thread(
    listener: TcpListener,
    router: Router,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    what: &'static str,
) -> std::io::Result<()> {
    let limits = ServeLimits::DEFAULT;
    let budget = FdBudget::new(limits.max_connections);
    serve_limited_on_own_thread(
        listener,
        router,
        (limits, budget),
        (tasks, None, None),
        shutdown,
        what,
    )
    .await
}

/// Serves `router` on `listener` until `shutdown`, within `limits` (see [`crate::serve`]),
/// on a thread of its own with a single-threaded runtime, telling handlers each peer's
/// address (axum's `ConnectInfo`); resolves when it has stopped. Tasks the handlers spawn (a
/// WebSocket's, say) run there too; those on `tasks` get a grace period (a second) to
/// finish after the listener stops.
///
/// For the management plane, kept apart from the control plane's runtime as linkerd keeps
/// its admin server apart: its load is many small requests (every node's heartbeat, every
/// interval), and on a multi-threaded runtime each one that arrived alone woke a second
/// worker to look for work to steal, which cost about a third of the coordinator's CPU at
/// 10 000 nodes. Apart, it also answers while the other planes are saturated.
///
/// `beside`, if given, runs on that thread too, for as long as the listener is served: the
/// coordinator's failure detector, which must be as late as the heartbeats it judges.
///
/// Dropping the returned future (a grace period that ran out) stops the thread's runtime and
/// every task on it.
///
/// # Errors
/// The listener cannot be moved to the new runtime, or the thread cannot start; or serving
/// fails.
pub async fn serve_limited_on_own_thread(
    listener: TcpListener,
    router: Router,
    (limits, budget): (ServeLimits, FdBudget),
    (tasks, tls, beside): (TaskTracker, Option<shared::tls::Tls>, Option<Beside>),
    shutdown: CancellationToken,
    what: &'static str,
) -> std::io::Result<()> {
    shared::own_thread::serve_on_own_thread(what, listener, move |listener| async move {
        let beside = beside.map(tokio::spawn);
        let served = crate::serve::serve(listener, router, limits, budget, tls, shutdown, what);
        let result = tokio::select! {
            served = served => served,
            () = keep_a_timer_pending() => Ok(()),
        };
        // Graceful shutdown does not wait for upgraded connections: WebSocket writers were
        // told to stop when the router (and its hub) went, and need a few turns of this
        // runtime to send their close frames before it is dropped.
        tasks.close();
        if tokio::time::timeout(UPGRADED_GRACE, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(plane = what, left = tasks.len(), grace = ?UPGRADED_GRACE, "upgraded connections still open after the grace period; dropping them");
        }
        if let Some(beside) = beside {
            beside.abort();
        }
        result
    })
    .await
}

/// Never ends; keeps a timer pending at most [`PENDING_TIMER`] ahead on this runtime.
///
/// Every request arms a timer (its timeout). When the runtime has no earlier timer, tokio
/// wakes its own driver to recompute its sleep each time one is armed: an eventfd write
/// and an extra turn of the event loop per request, about 3% of the coordinator's CPU at
/// 10 000 heartbeats/s. With this timer pending, a request deadline is later than the
/// driver's next wake-up and arming it costs no system call; it costs one wake-up a second.
async fn keep_a_timer_pending() {
    loop {
        tokio::time::sleep(PENDING_TIMER).await;
    }
}

/// Work that runs on a listener's own thread beside it ([`serve_limited_on_own_thread`]).
pub type Beside = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How long upgraded connections (WebSockets) get to say goodbye after the listener stops.
const UPGRADED_GRACE: Duration = Duration::from_secs(1);

/// See [`keep_a_timer_pending`]; shorter than any sensible request timeout.
const PENDING_TIMER: Duration = Duration::from_secs(1);

/// Counts every answered request by plane, method, matched route and status.
#[derive(Debug, Clone)]
struct CountRequestsLayer {
    metrics: HttpMetrics,
    plane: &'static str,
}

impl<S> Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountRequests {
            inner,
            metrics: self.metrics.clone(),
            plane: self.plane,
        }
    }
}

#[derive(Debug, Clone)]
struct CountRequests<S> {
    inner: S,
    metrics: HttpMetrics,
    plane: &'static str,
}

impl<S> Service<Request> for CountRequests<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The matched route, not the raw path, keeps the label set bounded.
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = crate::metrics::method_label(req.method());
        Counted {
            inner: self.inner.call(req),
            observed: Some((method, route, std::time::Instant::now())),
            metrics: self.metrics.clone(),
            plane: self.plane,
        }
    }
}

/// The future of [`CountRequests`]: the inner one, counted when it answers. A plain struct
/// rather than a boxed `async` block: the route futures it wraps are `Unpin`.
#[derive(Debug)]
struct Counted<F> {
    inner: F,
    /// The method, route and start of the request, until it is counted.
    observed: Option<(&'static str, Option<MatchedPath>, std::time::Instant)>,
    metrics: HttpMetrics,
    plane: &'static str,
}

impl<F> Future for Counted<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut this.inner).poll(cx));
        if let (Ok(response), Some((method, route, started))) = (&result, this.observed.take()) {
            this.metrics.observe(
                this.plane,
                method,
                route,
                response.status().as_u16(),
                started.elapsed(),
            );
        }
        Poll::Ready(result)
    }
}
