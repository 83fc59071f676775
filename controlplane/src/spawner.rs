//! [`Spawner`]: forks child processes from one long-lived thread of its own.
//!
//! A child that should die with this process asks the kernel for a parent-death signal
//! (`PR_SET_PDEATHSIG`, see `shared::lifeline`), and Linux sends it when the *thread* that
//! forked the child exits, not the process. A tokio worker may be retired at any time, so
//! children are never forked from one: `colony up`'s backends and deployed services both go
//! through a spawner, whose thread lives as long as its owner.

use tokio::process::Child;
use tokio::sync::oneshot;

/// A fork to run on the spawner thread: it makes the child (opening log files and the like
/// first, if it needs to).
type Fork = Box<dyn FnOnce() -> std::io::Result<Child> + Send>;

/// The request the spawner thread answers: a fork, and where the child goes.
type SpawnRequest = (Fork, oneshot::Sender<std::io::Result<Child>>);

/// Forks children from one long-lived thread.
#[derive(Debug)]
pub struct Spawner {
    requests: std::sync::mpsc::Sender<SpawnRequest>,
}

impl Spawner {
    /// Starts the thread, named `name`, whose children register with `runtime` (which reaps
    /// them). It runs until the spawner is dropped; when it ends, any child still running and
    /// asking for a parent-death signal gets it, which is what should happen to children
    /// nobody manages.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start(runtime: tokio::runtime::Handle, name: &str) -> std::io::Result<Spawner> {
        let (requests, incoming) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let _runtime = runtime.enter();
                while let Ok((fork, reply)) = incoming.recv() {
                    // Nobody waits for this child any more (the start was cancelled), so
                    // nobody would watch or stop it: end it now.
                    if let Err(Ok(mut orphan)) = reply.send(fork()) {
                        let _ = orphan.start_kill();
                    }
                }
            })?;
        Ok(Spawner { requests })
    }

    /// Runs `fork` on the spawner thread and hands back its child.
    ///
    /// # Errors
    /// `fork`'s error, or the spawner thread has stopped.
    pub async fn spawn(
        &self,
        fork: impl FnOnce() -> std::io::Result<Child> + Send + 'static,
    ) -> std::io::Result<Child> {
        let gone = || std::io::Error::other("the spawner thread has stopped");
        let (reply, child) = oneshot::channel();
        self.requests
            .send((Box::new(fork), reply))
            .map_err(|_| gone())?;
        child.await.map_err(|_| gone())?
    }
}
