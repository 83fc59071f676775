//! A `colony` process's tie to the process that started it: whoever starts `colony` as a
//! child it must not outlive (`colony up` for its backends, the test harness for every node)
//! puts its own pid in [`PARENT_PID_ENV`], and [`die_with_parent_from_env`], called first
//! thing in `main`, asks the kernel for SIGTERM when that parent dies (`PR_SET_PDEATHSIG` on
//! Linux), however it dies: even SIGKILL, which no parent can catch to clean up after itself.
//!
//! SIGTERM rather than SIGKILL, so the child shuts down as on any SIGTERM: it unregisters and
//! drains within its grace period, and leaves no registry entry behind.
//!
//! This module owns the child's side only. The parent's side, spawning from a thread that
//! lives as long as the children should (the kernel sends the signal when the *thread* that
//! forked the child exits, not the process), belongs to the spawner
//! (`controlplane::coordinator::processes`, the test harness).

use std::sync::OnceLock;

/// The environment variable holding the pid of the process this one must die with.
pub const PARENT_PID_ENV: &str = "COLONY_PARENT_PID";

/// The parent named by [`PARENT_PID_ENV`], once [`die_with_parent_from_env`] has tied this
/// process to it.
static PARENT: OnceLock<u32> = OnceLock::new();

/// Why this process could not tie itself to its parent.
#[derive(Debug, thiserror::Error)]
pub enum LifelineError {
    /// The variable is set but does not hold a pid.
    #[error("{PARENT_PID_ENV}={0:?} is not a process id")]
    NotAPid(String),
    /// The parent exited before the tie was made (or the variable names another process):
    /// this process would run on as an orphan, so it must not start.
    #[error("{PARENT_PID_ENV}={expected} names the process this one must die with, but our parent is {actual}: it has already exited")]
    ParentGone {
        /// The pid in the variable.
        expected: u32,
        /// Our parent now (whoever adopted us).
        actual: u32,
    },
    /// The kernel refused the parent-death signal.
    #[error("cannot ask for a signal when the parent dies (prctl PR_SET_PDEATHSIG): {0}")]
    Prctl(std::io::Error),
}

/// If [`PARENT_PID_ENV`] is set, arranges for SIGTERM when that parent dies and returns its
/// pid; if it is not set, does nothing and returns `None`.
///
/// Call it before any thread starts: the parent-death signal is an attribute of the calling
/// thread, and the main thread lives as long as the process.
///
/// The parent may die between our fork and this call, before the kernel knows to tell us, so
/// after asking we check that our parent is still the one named: if not, we were already
/// orphaned and [`LifelineError::ParentGone`] says so.
///
/// # Errors
/// [`LifelineError::NotAPid`], [`LifelineError::Prctl`], [`LifelineError::ParentGone`].
pub fn die_with_parent_from_env() -> Result<Option<u32>, LifelineError> {
    let Some(raw) = std::env::var_os(PARENT_PID_ENV) else {
        return Ok(None);
    };
    let raw = raw.to_string_lossy();
    let expected = parse_pid(&raw)?;
    set_parent_death_signal()?;
    check_parent(expected, std::os::unix::process::parent_id())?;
    // Set once per process; a second call finds the same value.
    let _ = PARENT.set(expected);
    Ok(Some(expected))
}

/// The pid this process was tied to, if any.
pub fn parent() -> Option<u32> {
    PARENT.get().copied()
}

/// True once the parent this process was tied to has died (we have been adopted by another
/// process). False if the process was never tied to a parent.
pub fn parent_gone() -> bool {
    PARENT
        .get()
        .is_some_and(|&pid| std::os::unix::process::parent_id() != pid)
}

fn parse_pid(raw: &str) -> Result<u32, LifelineError> {
    match raw.trim().parse::<u32>() {
        // Pid 0 is no process; pid 1 is init, whose death ends everything anyway.
        Ok(pid) if pid > 1 => Ok(pid),
        _ => Err(LifelineError::NotAPid(raw.to_owned())),
    }
}

fn check_parent(expected: u32, actual: u32) -> Result<(), LifelineError> {
    if expected == actual {
        Ok(())
    } else {
        Err(LifelineError::ParentGone { expected, actual })
    }
}

#[cfg(target_os = "linux")]
fn set_parent_death_signal() -> Result<(), LifelineError> {
    use nix::sys::prctl::set_pdeathsig;
    use nix::sys::signal::Signal;
    set_pdeathsig(Signal::SIGTERM).map_err(|e| LifelineError::Prctl(e.into()))
}

/// Elsewhere there is no parent-death signal; the parent's own shutdown still stops its
/// children, and the start-up check above still refuses to run orphaned.
#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal() -> Result<(), LifelineError> {
    tracing::warn!("no parent-death signal on this OS: a child may outlive a killed parent");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_parses_and_anything_else_is_named() {
        assert_eq!(parse_pid("4242").unwrap(), 4242);
        assert_eq!(parse_pid(" 4242\n").unwrap(), 4242);
        for bad in ["", "abc", "-3", "0", "1", "99999999999"] {
            let e = parse_pid(bad).unwrap_err();
            assert!(e.to_string().contains(PARENT_PID_ENV), "{e}");
        }
    }

    #[test]
    fn another_parent_means_ours_is_gone() {
        assert!(check_parent(10, 10).is_ok());
        let e = check_parent(10, 1).unwrap_err();
        assert!(
            e.to_string()
                .contains("our parent is 1: it has already exited"),
            "{e}"
        );
    }

    #[test]
    fn an_untied_process_never_reports_its_parent_gone() {
        // Tests never set the variable for this process, so nothing was tied.
        assert!(PARENT.get().is_none());
        assert!(!parent_gone());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_parent_death_signal_is_set() {
        // A thread of our own, so the attribute does not leak onto a test-harness thread.
        std::thread::spawn(|| {
            set_parent_death_signal().unwrap();
            assert_eq!(
                nix::sys::prctl::get_pdeathsig().unwrap(),
                Some(nix::sys::signal::Signal::SIGTERM)
            );
        })
        .join()
        .unwrap();
    }
}
