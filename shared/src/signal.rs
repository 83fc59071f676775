//! Process signals: the future that resolves on the first SIGINT, SIGTERM or SIGHUP.

use std::future::Future;

/// Listens for SIGINT (Ctrl-C), SIGTERM and SIGHUP from now on, and returns a future that
/// resolves on the first of them, naming it. Call it inside the runtime, as early as the
/// process should stop cleanly: a signal that comes before the handlers are installed still
/// has its default action, which kills the process on the spot.
///
/// SIGHUP stops a node like Ctrl-C because it arrives when its terminal closes, and the
/// default action would kill the node without unregistering or stopping its children. A
/// SIGHUP that was ignored when the process started (`nohup`) stays ignored: that operator
/// asked for the node to outlive the terminal.
///
/// If a handler cannot be installed (which only happens when the runtime is misconfigured),
/// the error is logged and that signal is never reported; the others still are.
#[cfg(unix)]
pub fn shutdown_signal() -> impl Future<Output = &'static str> + Send + 'static {
    use tokio::signal::unix::SignalKind;
    let int = listen(SignalKind::interrupt(), "SIGINT");
    let term = listen(SignalKind::terminate(), "SIGTERM");
    let hup = if hup_ignored_at_start() {
        None
    } else {
        listen(SignalKind::hangup(), "SIGHUP")
    };
    async move {
        tokio::select! {
            _ = next(int) => "SIGINT",
            _ = next(term) => "SIGTERM",
            _ = next(hup) => "SIGHUP",
        }
    }
}

/// Elsewhere, Ctrl-C only.
#[cfg(not(unix))]
pub fn shutdown_signal() -> impl Future<Output = &'static str> + Send + 'static {
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        "SIGINT"
    }
}

/// A handler for `kind`, or `None` (logged) if it cannot be installed.
#[cfg(unix)]
fn listen(
    kind: tokio::signal::unix::SignalKind,
    name: &'static str,
) -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind)
        .inspect_err(|e| tracing::error!(error = %e, signal = name, "cannot listen for a signal"))
        .ok()
}

/// Resolves on the next signal; never without a handler.
#[cfg(unix)]
async fn next(signal: Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(mut s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// True if SIGHUP was ignored when the process started (as `nohup` leaves it). Read from
/// `/proc/self/status`, whose `SigIgn` mask is what the process inherited until a handler
/// is installed; where that cannot be read, SIGHUP is taken as not ignored.
#[cfg(unix)]
fn hup_ignored_at_start() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| sighup_in_ignored_mask(&status))
        .unwrap_or(false)
}

/// Whether the `SigIgn:` line of a `/proc/<pid>/status` text has SIGHUP's bit (signal 1,
/// the lowest bit) set; `None` without a readable line.
fn sighup_in_ignored_mask(status: &str) -> Option<bool> {
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))?
        .trim();
    u64::from_str_radix(mask, 16).ok().map(|m| m & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ignored_mask_is_read_from_proc_status() {
        let status = "Name:\tcolony\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000001001\n";
        assert_eq!(sighup_in_ignored_mask(status), Some(true));
        let status = "SigIgn:\t0000000000001000\n";
        assert_eq!(sighup_in_ignored_mask(status), Some(false));
        assert_eq!(sighup_in_ignored_mask("Name:\tx\n"), None);
        assert_eq!(sighup_in_ignored_mask("SigIgn:\tzz\n"), None);
    }
}
