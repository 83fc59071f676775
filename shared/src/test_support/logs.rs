//! Warnings logged anywhere in a test process, kept as text so a test can look for the line
//! that names its own file or parameter.
//!
//! One global subscriber per process, installed on first use: the registries log from tokio's
//! blocking pool and the runtime's workers, not from the test's thread, so a thread-local
//! subscriber would miss their lines.

use std::io::Write;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

/// Every warning logged by this process since the first call, which installs the global
/// subscriber.
///
/// # Panics
/// Another global subscriber was installed first.
pub fn warnings() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .without_time()
            .finish();
        if let Err(e) = tracing::subscriber::set_global_default(subscriber) {
            panic!("cannot capture warnings: {e}");
        }
        captured
    })
}

/// Log output captured in memory; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Captured(Arc<RwLock<Vec<u8>>>);

impl Captured {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        let bytes = self.0.read().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
