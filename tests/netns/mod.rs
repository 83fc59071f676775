//! A test bed of hosts in network namespaces for the many-hosts tests (DESIGN §15), driven
//! through `scripts/netns-cluster.sh`: one coordinator (`c`) and backends (`b1` … `bN`), each
//! in a namespace of its own with an address on a bridge in 198.18.0.0/15.
//!
//! [`TestBed::up`] picks a tag and a /24 no other test bed on this machine uses, and the bed
//! always comes down: [`Drop`] runs the script's `down` whether the test passed or panicked,
//! then checks that no namespace, link or node process of the bed is left (a leftover fails
//! the test). The nodes run detached from the test (the script starts them with `setsid`), so
//! a test killed outright (SIGKILL) leaves them to `netns-cluster.sh down --tag T`; they carry
//! the run marker, so `scripts/test.sh` names any it finds.
//!
//! Needs root and `ip netns`. Without them [`TestBed::up`] returns `None` after saying why,
//! and the test returns early, except where `COLONY_REQUIRE_NETNS=1` (`.ci/run` sets it):
//! there a missing test bed fails the test, so CI never passes by skipping.
//!
//! Node arguments are written per host to `STATE/hosts/HOST.args` before the node starts
//! ([`TestBed::up`], or [`TestBed::add_host_args`] before [`TestBed::start`]): the coordinator
//! and the backends take different flags, and per-host TLS files will go there too.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use crate::common::{test_run_id, TEST_RUN_ENV};

/// The variable that turns a missing test bed from a skip into a failure.
pub const REQUIRE_ENV: &str = "COLONY_REQUIRE_NETNS";

/// The operator token every node of a bed is given, and [`TestBed::http`] presents.
pub const OPERATOR_TOKEN: &str = "netns-test-bed-operator-token";

/// Test beds made by this process so far, for unique tags.
static BEDS: AtomicU32 = AtomicU32::new(0);

/// The /24s this process has taken (index as in [`used_nets`]): a bed picks its net before
/// its bridge exists, so beds starting at once in this process would not see each other's.
static TAKEN: [AtomicBool; 512] = [const { AtomicBool::new(false) }; 512];

/// Why this machine cannot run a test bed, or `None` if it can.
fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output();
    match uid {
        Ok(out) if String::from_utf8_lossy(&out.stdout).trim() == "0" => {}
        Ok(_) => return Some("not running as root (network namespaces need CAP_NET_ADMIN)".into()),
        Err(e) => return Some(format!("cannot run `id -u`: {e}")),
    }
    match Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => None,
        Ok(_) => Some("`ip netns list` fails here (no network namespace support)".into()),
        Err(e) => Some(format!("the ip command (iproute2) is missing: {e}")),
    }
}

/// The script's path in this checkout.
fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/netns-cluster.sh")
}

/// Third octets of 198.18.X.0/24 (and 198.19.X.0/24 as 256 + X) already on an interface of
/// this machine's root namespace: another bed's bridge.
fn used_nets() -> Vec<u32> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.split_whitespace()
        .filter_map(|word| {
            let mut parts = word.split(['.', '/']);
            let (a, b, c) = (parts.next()?, parts.next()?, parts.next()?);
            let c: u32 = c.parse().ok()?;
            match (a, b) {
                ("198", "18") => Some(c),
                ("198", "19") => Some(256 + c),
                _ => None,
            }
        })
        .collect()
}

/// A tag (`[a-z0-9]{1,8}`, the script's rule) and a network prefix (`198.18.X`) unique on
/// this machine: the pid and a counter make the tag, the prefix is the first /24 after one
/// derived from them that no interface uses and no other bed of this process took (77, the
/// script's default for people, is left alone).
fn pick_tag_and_net() -> (String, String) {
    let n = BEDS.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    let tag = format!("t{:x}{}", pid & 0xff_ffff, n % 10);
    let used = used_nets();
    let start = (pid.wrapping_mul(7) + n * 13) % 512;
    let pick = (0..512)
        .map(|i| (start + i) % 512)
        .find(|x| {
            !used.contains(x)
                && *x != 77
                && *x != 0
                && TAKEN[*x as usize]
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
        })
        .expect("every /24 of 198.18.0.0/15 is in use on this machine");
    let net = if pick < 256 {
        format!("198.18.{pick}")
    } else {
        format!("198.19.{}", pick - 256)
    };
    (tag, net)
}

/// One test bed, brought up by [`TestBed::up`] and down by its drop.
pub struct TestBed {
    pub tag: String,
    /// The first three octets of every address of the bed, e.g. `198.18.42`.
    pub net: String,
    /// The script's state directory: logs, pids, per-host arguments.
    pub state: PathBuf,
    /// The file registry every node of the bed uses (the nodes share this machine's file
    /// system, as machines would share a directory).
    pub registry: tempfile::TempDir,
    pub backends: usize,
    /// A client for the bed's HTTP planes, presenting the operator token.
    pub http: reqwest::Client,
}

impl TestBed {
    /// Brings up a coordinator and `backends` backends, with `coordinator` arguments for the
    /// coordinator and `backend` arguments for every backend (per-host files, so per-host
    /// TLS files can join them). `None` (after printing why) when the machine cannot run a
    /// test bed and [`REQUIRE_ENV`] is not `1`.
    pub fn up(backends: usize, coordinator: &[&str], backend: &[&str]) -> Option<TestBed> {
        if let Some(why) = unavailable() {
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("{REQUIRE_ENV}=1 but the network-namespace test bed cannot run: {why}");
            }
            // Straight to the stderr file, not through the harness's capture: a skip must
            // show in a normal `cargo test` run, not only with --nocapture.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: needs the network-namespace test bed, which cannot run here: {why} (set {REQUIRE_ENV}=1 to make this a failure)"
            );
            return None;
        }
        let (tag, net) = pick_tag_and_net();
        let state = PathBuf::from(format!("/tmp/colony-netns-{tag}"));
        // A directory left by a test that was killed outright (same pid, long ago) goes first.
        let _ = std::fs::remove_dir_all(&state);
        let bed = TestBed {
            tag,
            net,
            state,
            registry: tempfile::tempdir().unwrap(),
            backends,
            http: shared::tls::http_client(None)
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .default_headers(
                    [(
                        reqwest::header::AUTHORIZATION,
                        format!("Bearer {OPERATOR_TOKEN}").parse().unwrap(),
                    )]
                    .into_iter()
                    .collect(),
                )
                .build()
                .unwrap(),
        };
        bed.add_host_args("c", coordinator);
        for k in 1..=backends {
            bed.add_host_args(&format!("b{k}"), backend);
        }
        let registry = bed.registry.path().display().to_string();
        let bin = crate::common::colony_bin();
        let count = backends.to_string();
        let argv = ["up", &count, "--registry", &registry, "--bin", bin];
        // From here on the drop tears down whatever `up` made, even if it failed half-way.
        bed.run_ok(&argv);
        Some(bed)
    }

    /// The script with `args` and `--tag`, its nodes carrying the run marker and the
    /// operator token, but no lifeline: their parent is the script, which exits at once.
    fn script(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(script_path());
        // `--tag` must come before any `--`, after which everything is the nodes'.
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        cmd.args(&args[..split])
            .args(["--tag", &self.tag, "--net", &self.net])
            .args(&args[split..])
            .env(TEST_RUN_ENV, test_run_id())
            .env("RUST_LOG", "info")
            .env("COLONY_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env_remove(shared::lifeline::PARENT_PID_ENV)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the script, returning its output, failing the test (with the nodes' logs) if it
    /// fails.
    pub fn run_ok(&self, args: &[&str]) -> Output {
        let out = self.script(args).output().expect("run netns-cluster.sh");
        assert!(
            out.status.success(),
            "netns-cluster.sh {args:?} failed: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        out
    }

    /// The address of `host` (`c`, `b1` …).
    pub fn ip(&self, host: &str) -> String {
        match host {
            "c" => format!("{}.10", self.net),
            b => {
                let k: u32 = b.trim_start_matches('b').parse().expect("host c or bK");
                format!("{}.{}", self.net, 10 + k)
            }
        }
    }

    /// The coordinator's control plane base URL.
    pub fn control(&self) -> String {
        format!("http://{}:8083", self.ip("c"))
    }

    /// The coordinator's management plane base URL.
    pub fn mgmt(&self) -> String {
        format!("http://{}:8084", self.ip("c"))
    }

    /// The default instance id of backend `host` on the bed (DESIGN §2).
    pub fn backend_id(&self, host: &str) -> String {
        format!("backend_{}_9000", self.ip(host).replace('.', "-"))
    }

    /// Adds arguments for `host` only, from its next start on.
    pub fn add_host_args(&self, host: &str, args: &[&str]) {
        let dir = self.state.join("hosts");
        std::fs::create_dir_all(&dir).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{host}.args")))
            .unwrap();
        for arg in args {
            writeln!(file, "{arg}").unwrap();
        }
    }

    /// Starts the node of `host` again, with `extra` arguments.
    pub fn start(&self, host: &str, extra: &[&str]) {
        let mut argv = vec!["start", host, "--"];
        argv.extend_from_slice(extra);
        self.run_ok(&argv);
    }

    /// Stops the node of `host` (SIGTERM, and waits).
    pub fn stop(&self, host: &str) {
        self.run_ok(&["stop", host]);
    }

    /// Takes `host`'s link down: it is cut off from every other host.
    pub fn cut(&self, host: &str) {
        self.run_ok(&["cut", host]);
    }

    /// Brings `host`'s link back up.
    pub fn heal(&self, host: &str) {
        self.run_ok(&["heal", host]);
    }

    /// Drops everything `host` sends to `peer` (a host name), inside `host`'s namespace.
    pub fn blackhole(&self, host: &str, peer: &str) {
        let ip = self.ip(peer);
        self.run_ok(&["blackhole", host, &ip]);
    }

    /// Undoes [`TestBed::blackhole`].
    pub fn unblackhole(&self, host: &str, peer: &str) {
        let ip = self.ip(peer);
        self.run_ok(&["unblackhole", host, &ip]);
    }

    /// Runs `cmd` inside `host`'s namespace and returns its output. The script execs into
    /// `ip netns exec`, which execs `cmd`, so the child is `cmd` itself: it is killed if the
    /// test drops the future, and a `colony` dies with the test (its lifeline).
    pub async fn exec_async(&self, host: &str, cmd: &[&str]) -> Output {
        let mut argv = vec!["exec", host, "--"];
        argv.extend_from_slice(cmd);
        let mut command = tokio::process::Command::from(self.script(&argv));
        command
            .env(
                shared::lifeline::PARENT_PID_ENV,
                std::process::id().to_string(),
            )
            .kill_on_drop(true);
        command.output().await.expect("run netns-cluster.sh exec")
    }

    /// `host`'s node log so far.
    pub fn log(&self, host: &str) -> String {
        std::fs::read_to_string(self.state.join(format!("{host}.log"))).unwrap_or_default()
    }

    /// Every node log, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        let mut hosts = vec!["c".to_owned()];
        hosts.extend((1..=self.backends).map(|k| format!("b{k}")));
        for host in hosts {
            let log = self.log(&host);
            // The end of each log is what explains a failure.
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            all.push_str(&format!("--- {host} log (last lines) ---\n"));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    /// The pid of `host`'s node, if the script started one and it runs.
    pub fn pid(&self, host: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.state.join(format!("{host}.pid"))).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    /// Waits until the node of `host` has exited, returning whether it did within `within`.
    pub async fn exited_within(&self, host: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.pid(host).is_some() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Every pid the script recorded for this bed.
    fn recorded_pids(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(&self.state) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| t.trim().parse().ok())
            .collect()
    }

    /// What of this bed is still there: namespaces, links, processes.
    fn leftovers(&self, pids: &[u32]) -> Vec<String> {
        let prefix = format!("{}-", self.tag);
        let mut left = Vec::new();
        let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
        for line in String::from_utf8_lossy(&netns.stdout).lines() {
            if line.starts_with(&prefix) {
                left.push(format!("namespace {line}"));
            }
        }
        let links = Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&links.stdout).lines() {
            let name = line.split(": ").nth(1).unwrap_or("");
            if name.starts_with(&prefix) {
                left.push(format!("link {name}"));
            }
        }
        for pid in pids {
            if alive(*pid) {
                left.push(format!("process {pid}"));
            }
        }
        left
    }
}

/// True if `pid` runs (a zombie waiting for its reaper does not count: it has exited).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

impl Drop for TestBed {
    /// Takes the bed down, then fails the test if anything of it is left.
    fn drop(&mut self) {
        let pids = self.recorded_pids();
        let down = self.script(&["down"]).output();
        let mut left = self.leftovers(&pids);
        // Processes stopped by `down` are reaped by init; give that a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !left.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            left = self.leftovers(&pids);
        }
        let down_failed = match &down {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(String::from_utf8_lossy(&out.stderr).into_owned()),
            Err(e) => Some(e.to_string()),
        };
        if std::thread::panicking() {
            if !left.is_empty() {
                eprintln!("test bed {} left behind: {left:?}", self.tag);
            }
            return;
        }
        assert!(
            down_failed.is_none(),
            "netns-cluster.sh down failed: {down_failed:?}"
        );
        assert!(
            left.is_empty(),
            "test bed {} left behind: {left:?}",
            self.tag
        );
        assert!(
            !self.state.exists(),
            "the state directory {} is left",
            self.state.display()
        );
    }
}
