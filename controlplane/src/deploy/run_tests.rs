//! Deployed services as real processes: a package whose `start.sh` serves TCP on a free
//! port (python3), installed, started, probed, stopped, restarted, restored from the
//! registry, replaced by a second version; and the ways a start fails.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::deployer::Deployer;
use super::error::NotReady;
use super::install::Installer;
use super::lifecycle::{start_order, DeployEvent, RunAs, Services, ServicesConfig};
use super::package::PackageFile;
use super::service::ServiceState;
use super::DeployError;

fn package(manifest: &str, start: &str, health: Option<&str>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder.append_data(&mut header, path, data).unwrap();
    };
    add("manifest.yaml", manifest.as_bytes());
    add("scripts/start.sh", start.as_bytes());
    add(
        "scripts/stop.sh",
        b"#!/bin/sh\necho stopped > \"$COLONY_SERVICE_DIR/stopped\"\n",
    );
    if let Some(health) = health {
        add("scripts/health.sh", health.as_bytes());
    }
    let tar = builder.into_inner().unwrap();
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// A TCP server on `port` that answers every connection, as the service.
fn server_package(name: &str, version: &str, port: u16, depends_on: &[&str]) -> Vec<u8> {
    let manifest = format!(
        "name: {name}\nversion: '{version}'\nservice:\n  ports:\n    - name: http\n      port: {port}\ndepends_on: [{}]\nrequires:\n  commands: [python3]\nhealth:\n  interval: 200ms\n  timeout: 2s\n",
        depends_on.join(", ")
    );
    let start = format!(
        "#!/bin/sh\necho starting {name} {version}\nenv > \"$COLONY_SERVICE_DIR/env\"\nexec python3 -c 'import socket,sys\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", {port})); s.listen()\nwhile True:\n    c,_=s.accept(); c.sendall(b\"{version}\\n\"); c.close()'\n"
    );
    let health = format!(
        "#!/bin/sh\nexec python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1).close(); print(\"ok\")'\n"
    );
    package(&manifest, &start, Some(&health))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the service on `port` says, if it answers.
fn probe(port: u16) -> Option<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text.trim().to_owned())
}

struct Node {
    dir: tempfile::TempDir,
    deployer: Deployer,
}

impl Node {
    fn open(dir: tempfile::TempDir, start_timeout: Duration) -> Self {
        let services = Services::open(ServicesConfig {
            node: "coordinator".to_owned(),
            host: "127.0.0.1".to_owned(),
            state_dir: dir.path().join("state"),
            run_as: RunAs::Current,
            start_timeout,
            stop_grace: Duration::from_secs(5),
        })
        .unwrap();
        let installer = Installer::new(dir.path().join("opt"), Default::default());
        let deployer = Deployer::new(installer, services);
        Node { dir, deployer }
    }

    fn new() -> Self {
        Self::open(tempfile::tempdir().unwrap(), Duration::from_secs(30))
    }

    async fn deploy(
        &self,
        file: &str,
        bytes: &[u8],
        activate: bool,
    ) -> Result<super::service::ServiceEntry, DeployError> {
        let file = PackageFile::parse(file).unwrap();
        std::fs::create_dir_all(self.deployer.packages_dir()).unwrap();
        std::fs::write(self.deployer.package_path(&file), bytes).unwrap();
        self.deployer.deploy(&file, "coordinator", activate).await
    }

    fn services(&self) -> &Services {
        self.deployer.services()
    }

    fn installed(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.dir.path().join("opt")) else {
            return Vec::new();
        };
        dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

fn steps(events: &mut tokio::sync::broadcast::Receiver<DeployEvent>) -> Vec<&'static str> {
    let mut steps = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let DeployEvent::Progress(p) = event {
            steps.push(p.step);
        }
    }
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_deploys_runs_stops_restarts_and_comes_back_with_the_node() {
    let node = Node::new();
    let port = free_port();
    let mut events = node.services().subscribe();
    let entry = node
        .deploy(
            "web-1.0.tar.gz",
            &server_package("web", "1.0", port, &[]),
            false,
        )
        .await
        .unwrap();
    assert_eq!(entry.state, ServiceState::Running);
    assert_eq!(entry.endpoints[0].address, format!("127.0.0.1:{port}"));
    assert_eq!(
        steps(&mut events),
        [
            "received",
            "verified",
            "extracted",
            "installed",
            "dependencies",
            "starting",
            "running"
        ]
    );
    assert_eq!(probe(port).as_deref(), Some("1.0"));

    // A health check runs and is recorded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while node
        .services()
        .get("web")
        .unwrap()
        .last_health_check
        .is_none()
    {
        assert!(tokio::time::Instant::now() < deadline, "no health check");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        node.services()
            .get("web")
            .unwrap()
            .last_health_check
            .unwrap()
            .healthy
    );

    // The same version again changes nothing.
    let again = node
        .deploy(
            "web-1.0.tar.gz",
            &server_package("web", "1.0", port, &[]),
            false,
        )
        .await
        .unwrap();
    assert_eq!(again.execution, entry.execution);

    // start.sh saw only the clean environment, in its install dir.
    let env = std::fs::read_to_string(entry.dir.join("env")).unwrap();
    assert!(
        env.contains(&format!("COLONY_SERVICE_DIR={}", entry.dir.display())),
        "{env}"
    );
    assert!(!env.contains("CARGO"), "{env}");

    let stopped = node.services().stop("web").await.unwrap();
    assert_eq!(stopped.state, ServiceState::Stopped);
    // stop.sh ran first.
    assert!(entry.dir.join("stopped").is_file());
    assert_eq!(probe(port), None);
    let started = node.services().start("web").await.unwrap();
    assert_eq!(started.state, ServiceState::Running);
    assert_eq!(probe(port).as_deref(), Some("1.0"));

    // The node stops: the service stops with it, but the registry still says running...
    node.services().shutdown().await;
    assert_eq!(probe(port), None);
    let Node { dir, .. } = node;
    let node = Node::open(dir, Duration::from_secs(30));
    assert_eq!(
        node.services().get("web").unwrap().state,
        ServiceState::Running
    );
    // ...so the node starts it again.
    node.services().restore().await;
    assert_eq!(probe(port).as_deref(), Some("1.0"));
    node.services().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_version_installs_beside_the_first_and_takes_over_on_restart() {
    let node = Node::new();
    let port = free_port();
    node.deploy(
        "web-1.0.tar.gz",
        &server_package("web", "1.0", port, &[]),
        false,
    )
    .await
    .unwrap();
    let beside = node
        .deploy(
            "web-2.0.tar.gz",
            &server_package("web", "2.0", port, &[]),
            false,
        )
        .await
        .unwrap();
    assert_eq!(beside.version, "1.0");
    assert_eq!(beside.pending.as_ref().unwrap().version, "2.0");
    assert_eq!(probe(port).as_deref(), Some("1.0"));
    let mut installed = node.installed();
    installed.sort();
    assert_eq!(installed, ["web-1.0", "web-2.0"]);

    let restarted = node.services().restart("web").await.unwrap();
    assert_eq!(
        (restarted.version.as_str(), restarted.pending),
        ("2.0", None)
    );
    assert_eq!(probe(port).as_deref(), Some("2.0"));

    // A third version with activate takes over at once.
    let now = node
        .deploy(
            "web-3.0.tar.gz",
            &server_package("web", "3.0", port, &[]),
            true,
        )
        .await
        .unwrap();
    assert_eq!(now.version, "3.0");
    assert_eq!(probe(port).as_deref(), Some("3.0"));
    // The same version again, even with activate, leaves the running process alone.
    let same = node
        .deploy(
            "web-3.0.tar.gz",
            &server_package("web", "3.0", port, &[]),
            true,
        )
        .await
        .unwrap();
    assert_eq!(same.execution, now.execution);
    node.services().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_script_that_exits_at_once_fails_with_its_status_and_output() {
    let node = Node::new();
    let mut events = node.services().subscribe();
    let bytes = package(
        "name: crash\nversion: '1'\nservice:\n  ports:\n    - name: p\n      port: 1\n",
        "#!/bin/sh\necho 'cannot open config' >&2\nexit 3\n",
        None,
    );
    let err = node
        .deploy("crash-1.tar.gz", &bytes, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeployError::NotReady(NotReady::Exited(_))),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("exit status: 3") && text.contains("cannot open config"),
        "{text}"
    );
    let entry = node.services().get("crash").unwrap();
    assert!(
        matches!(&entry.state, ServiceState::Failed { reason } if reason.contains("exit status: 3"))
    );
    assert_eq!(steps(&mut events).last(), Some(&"failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_script_that_never_gets_ready_is_killed_and_fails() {
    let node = Node::open(tempfile::tempdir().unwrap(), Duration::from_secs(1));
    let bytes = package(
        "name: hang\nversion: '1'\nhealth:\n  interval: 100ms\n  timeout: 1s\n",
        "#!/bin/sh\nexec sleep 600\n",
        Some("#!/bin/sh\nexit 1\n"),
    );
    let err = node
        .deploy("hang-1.tar.gz", &bytes, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeployError::NotReady(NotReady::TimedOut(t)) if *t == Duration::from_secs(1)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("not ready within 1s; killed"),
        "{err}"
    );
    let entry = node.services().get("hang").unwrap();
    assert!(matches!(entry.state, ServiceState::Failed { .. }));
    let super::service::Execution::ManagedProcess { pid, .. } = entry.execution;
    assert_eq!(pid, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_dependencies_missing_commands_and_other_runtimes_are_refused_before_install() {
    let node = Node::new();
    let needs = package(
        "name: app\nversion: '1'\ndepends_on: [db]\n",
        "#!/bin/sh\n",
        None,
    );
    let err = node
        .deploy("app-1.tar.gz", &needs, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeployError::UnknownDependency { ref dependency, .. } if dependency == "db"),
        "{err}"
    );
    let missing = package(
        "name: app\nversion: '1'\nrequires:\n  commands: [no-such-command-here]\n",
        "#!/bin/sh\n",
        None,
    );
    let err = node
        .deploy("app-1.tar.gz", &missing, false)
        .await
        .unwrap_err();
    assert!(matches!(err, DeployError::MissingCommand(_)), "{err}");
    let docker = package(
        "name: app\nversion: '1'\nservice:\n  type: docker\n",
        "#!/bin/sh\n",
        None,
    );
    let err = node
        .deploy("app-1.tar.gz", &docker, false)
        .await
        .unwrap_err();
    assert!(matches!(err, DeployError::NotSupported("docker")), "{err}");
    assert!(node.installed().is_empty(), "{:?}", node.installed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_start_first_and_cycles_are_refused() {
    let node = Node::new();
    let (db_port, app_port) = (free_port(), free_port());
    node.deploy(
        "db-1.tar.gz",
        &server_package("db", "1", db_port, &[]),
        false,
    )
    .await
    .unwrap();
    node.deploy(
        "app-1.tar.gz",
        &server_package("app", "1", app_port, &["db"]),
        false,
    )
    .await
    .unwrap();
    node.services().stop("db").await.unwrap();
    node.services().stop("app").await.unwrap();
    // Starting app starts db first.
    node.services().start("app").await.unwrap();
    assert_eq!(probe(db_port).as_deref(), Some("1"));
    // db 2 depending on app would close a loop.
    let err = node
        .deploy(
            "db-2.tar.gz",
            &server_package("db", "2", db_port, &["app"]),
            false,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DeployError::DependencyCycle(_)), "{err}");
    assert!(!node.installed().contains(&"db-2".to_owned()));
    node.services().shutdown().await;
}

#[test]
fn start_order_puts_dependencies_first_and_names_cycles() {
    let graph: BTreeMap<String, Vec<String>> = [
        ("a", vec!["b", "c"]),
        ("b", vec!["c"]),
        ("c", vec![]),
        ("x", vec!["y"]),
        ("y", vec!["x"]),
        ("z", vec!["nope"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(start_order(&graph, "a").unwrap(), ["c", "b", "a"]);
    assert!(
        matches!(start_order(&graph, "x"), Err(DeployError::DependencyCycle(c)) if c == ["x", "y", "x"])
    );
    assert!(matches!(
        start_order(&graph, "z"),
        Err(DeployError::UnknownDependency { .. })
    ));
}

#[tokio::test]
async fn without_a_deploy_user_nothing_is_installed_or_run() {
    let dir = tempfile::tempdir().unwrap();
    let services = Services::open(ServicesConfig {
        node: "coordinator".to_owned(),
        host: "127.0.0.1".to_owned(),
        state_dir: dir.path().join("state"),
        run_as: RunAs::Unavailable("the deploy user \"ghost\" does not exist".to_owned()),
        start_timeout: Duration::from_secs(5),
        stop_grace: Duration::from_secs(5),
    })
    .unwrap();
    let node = Node {
        deployer: Deployer::new(
            Installer::new(dir.path().join("opt"), Default::default()),
            services,
        ),
        dir,
    };
    let bytes = package(
        "name: app\nversion: '1'\n",
        "#!/bin/sh\nexec sleep 600\n",
        None,
    );
    let err = node
        .deploy("app-1.tar.gz", &bytes, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
    assert!(node.installed().is_empty());
}
