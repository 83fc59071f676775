//! moto's SSM-compatible server for tests and benches: started on a free loopback port, polled
//! until it answers, reset on demand, and stopped by its pid when the guard drops.
//!
//! Std only; the shared crate's tests, the whole-cluster tests and the benches all use it
//! through the `test-support` feature. Two things keep a test from ever reaching
//! beyond loopback: the server listens on 127.0.0.1 only, and [`Moto::aws_env`] is the complete
//! AWS configuration every SSM client in a test gets (test credentials, a region, the endpoint,
//! instance metadata disabled and pointed at a dead loopback port, no shared config files).
//!
//! moto also watches its standard input and exits when it closes, so a test process that dies
//! without running destructors (a panic under `panic = abort`, a kill) still leaves no server.
//!
//! If moto is missing, starting it panics with a message saying to run `./scripts/setup.sh`:
//! the SSM tests fail rather than skip.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use super::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long moto may take to answer after it is started (a loaded 2-core machine is slow to
/// import it).
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Why moto could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    /// Its log file could not be created.
    #[error("moto log: {0}")]
    Log(std::io::Error),
    /// python3 could not be run.
    #[error("cannot run python3 ({0}): run ./scripts/setup.sh")]
    NoPython(std::io::Error),
    /// moto exited before it answered.
    #[error("{hint}; python3 exited with {status} on port {port}:\n{output}")]
    Exited {
        /// What to do about it.
        hint: &'static str,
        /// How python3 exited.
        status: std::process::ExitStatus,
        /// The port it was given.
        port: u16,
        /// What it logged.
        output: String,
    },
    /// moto did not answer in time.
    #[error("moto did not answer on 127.0.0.1:{port} within {READY_DEADLINE:?}")]
    NotReady {
        /// The port it was given.
        port: u16,
    },
    /// A request to moto's control API failed or was refused.
    #[error("POST {path}: {answer}")]
    Post {
        /// The control API path.
        path: String,
        /// The failure, or moto's status line.
        answer: String,
    },
}

/// Runs moto's server with a watchdog thread that exits when standard input closes.
const LAUNCHER: &str = r#"
import os, sys, threading
def watch():
    sys.stdin.buffer.read()
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(sys.argv[1:])
"#;

/// A running moto server; dropping it kills the process.
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it answers.
    ///
    /// # Panics
    /// moto is not installed or does not answer within [`READY_DEADLINE`].
    pub fn start() -> Moto {
        // The port is free when we look; another process could take it before moto binds, so
        // a failed start is retried on a new port.
        let mut last = None;
        for _ in 0..5 {
            match Moto::try_start(free_port()) {
                Ok(moto) => return moto,
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => panic!("{e}"),
            None => unreachable!("five attempts were made"),
        }
    }

    /// Starts moto on `port` (e.g. the port of a server that was stopped) and waits until it
    /// answers.
    ///
    /// # Panics
    /// As [`Moto::start`], or the port is taken.
    pub fn start_on(port: u16) -> Moto {
        Moto::try_start(port).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts moto on `port` and waits until it answers.
    ///
    /// # Errors
    /// python3 or moto is missing, moto exited, or it did not answer within [`READY_DEADLINE`].
    fn try_start(port: u16) -> Result<Moto, MotoError> {
        let log =
            std::env::temp_dir().join(format!("colony-moto-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).map_err(MotoError::Log)?;
        let child = Command::new("python3")
            .args(["-c", LAUNCHER, "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // moto logs every request; a file never fills up the way an unread pipe would.
            .stderr(log_file)
            .spawn()
            .map_err(MotoError::NoPython)?;
        let mut moto = Moto { child, port, log };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                let output = std::fs::read_to_string(&moto.log).unwrap_or_default();
                let hint = if output.contains("No module named") {
                    "moto is not installed: run ./scripts/setup.sh (it installs moto[ssm])"
                } else {
                    "moto did not start"
                };
                return Err(MotoError::Exited {
                    hint,
                    status,
                    port,
                    output,
                });
            }
            if moto.post("/moto-api/reset").is_ok() {
                return Ok(moto);
            }
            if started.elapsed() > READY_DEADLINE {
                return Err(MotoError::NotReady { port });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:{port}`.
    pub fn endpoint(&self) -> String {
        endpoint(self.port)
    }

    /// The AWS configuration for an SSM client of this server; see [`aws_env`].
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        aws_env(self.port)
    }

    /// Clears every parameter.
    ///
    /// # Panics
    /// moto does not answer.
    pub fn reset(&self) {
        if let Err(e) = self.post("/moto-api/reset") {
            panic!("cannot reset moto: {e}");
        }
    }

    /// Stops the server and waits for it to exit, freeing its port.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        // By pid: the child we started, and only it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }

    fn post(&self, path: &str) -> Result<(), MotoError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let io = |e| MotoError::Post {
            path: path.to_owned(),
            answer: format!("{e}"),
        };
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .map_err(io)?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).map_err(io)?;
        if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
            Ok(())
        } else {
            Err(MotoError::Post {
                path: path.to_owned(),
                answer: answer.lines().next().unwrap_or("no answer").to_owned(),
            })
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `http://127.0.0.1:{port}`.
pub fn endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// The whole AWS configuration of an SSM client in a test, pointing at `port` on loopback:
/// test credentials, a region, the SSM endpoint, and nothing that could send traffic
/// elsewhere (instance metadata disabled, and its endpoint a dead loopback port in case;
/// shared config and credentials files that do not exist, so a developer's `~/.aws` is never
/// read).
pub fn aws_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            "http://127.0.0.1:9".to_owned(),
        ),
        ("AWS_ENDPOINT_URL_SSM", endpoint(port)),
        ("AWS_CONFIG_FILE", "/dev/null".to_owned()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_owned()),
    ]
}
