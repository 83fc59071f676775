//! Running a node: bind every listener, serve until a signal, then drain.

use std::net::SocketAddr;

use anyhow::Context;
use dataplane::DataPlane;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cli::BackendArgs;

/// `colony backend`.
pub async fn run_backend(args: BackendArgs) -> anyhow::Result<()> {
    let config = args.data_plane.config()?;
    let addr = SocketAddr::new(args.bind_ip, args.internal_port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the data plane on {addr}"))?;
    let local = listener
        .local_addr()
        .context("data plane has no local address")?;
    info!(internal = %local, "backend data plane listening");

    let shutdown = CancellationToken::new();
    let data_plane = DataPlane::new(config);
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { data_plane.serve(listener, shutdown).await }
    });

    let signal = shared::signal::shutdown_signal().await;
    info!(signal, "shutting down");
    shutdown.cancel();
    server.await.context("data plane task failed")?;
    info!("backend stopped");
    Ok(())
}
