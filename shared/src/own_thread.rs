//! [`serve_on_own_thread`]: a listener served on a thread of its own, with a single-threaded
//! runtime, for the planes that must not share the node's worker threads (the data plane and
//! the management plane). What is served is the caller's business.

use std::future::Future;
use std::io;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Moves `listener` to a new thread `colony-{name}` with a single-threaded runtime, runs
/// `serve(listener)` there and returns its result once it ends. Every task `serve` spawns
/// runs on that thread too.
///
/// Dropping the returned future (the caller's grace period ran out) stops that runtime and
/// every task on it: no port left bound, nothing running on after the node said it stopped.
///
/// # Errors
/// The runtime or the thread cannot be created, the listener cannot move, or `serve` fails.
pub async fn serve_on_own_thread<F, Fut>(
    name: &str,
    listener: TcpListener,
    serve: F,
) -> io::Result<()>
where
    F: FnOnce(TcpListener) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<()>>,
{
    let listener = listener.into_std()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let abort = CancellationToken::new();
    let _abort_on_drop = abort.clone().drop_guard();
    let (done, finished) = tokio::sync::oneshot::channel::<io::Result<()>>();
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name(format!("colony-{name}"))
        .spawn(move || {
            let _entered = span.enter();
            let result = runtime.block_on(async move {
                let listener = TcpListener::from_std(listener)?;
                tokio::select! {
                    result = serve(listener) => result,
                    () = abort.cancelled() => Ok(()),
                }
            });
            let _ = done.send(result);
        })?;
    finished.await.unwrap_or_else(|_| {
        Err(io::Error::other(format!(
            "the {name} thread ended without reporting"
        )))
    })
}
