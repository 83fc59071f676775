//! The registry contract run against every implementation in this crate, plus what only the
//! file registry promises: tolerant reads, atomic writes under contention from threads and
//! from separate processes.
//!
//! The multi-process test re-runs this very test binary (`std::env::current_exe()`) 100 times,
//! asking each child to run only `registry_child_process` with `--exact`; that test does nothing
//! unless `COLONY_REGISTRY_CHILD_ROOT` is set, which only the parent does (on the child's
//! command, never with `set_var`). This needs no helper binary and no nested `cargo` call
//! (which would wait on the lock of the `cargo test` that started us), and it works the same
//! under `cargo test` and `cargo nextest`.

// Test code throughout, helpers included: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};

use shared::registry::contract::Fixture;
use shared::registry::{
    build_registry, ClusterRegistry, FileClusterRegistry, RegistryConfig, RegistryError,
    RegistryKind,
};
use shared::test_support::logs::warnings;
use shared::NodeAddress;

mod file_registry {
    use super::*;

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture::file(dir.path().to_owned(), Box::new(dir))
    }

    shared::registry_contract_tests!(fixture);
}

mod in_memory_registry {
    use super::*;

    async fn fixture() -> Fixture {
        Fixture::in_memory()
    }

    shared::registry_contract_tests!(fixture);
}

// === helpers ===

fn v4(port: u16) -> NodeAddress {
    NodeAddress::new(Ipv4Addr::LOCALHOST.into(), port, port + 1, port + 2)
}

/// The longest textual form an address can take, so that files change length between writes.
fn v6(port: u16) -> NodeAddress {
    let ip = Ipv6Addr::new(
        0xfd00, 0xabcd, 0xef01, 0x2345, 0x6789, 0xabcd, 0xef01, 0x2345,
    );
    NodeAddress::new(IpAddr::V6(ip), port, port + 1, port + 2)
}

fn json(address: NodeAddress) -> String {
    serde_json::to_string(&address).unwrap()
}

/// File names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

// === layout ===

#[tokio::test]
async fn files_land_at_the_documented_paths_holding_exactly_the_json() {
    let dir = tempfile::tempdir().unwrap();
    // The root does not exist yet: every directory is created on the first write.
    let root = dir.path().join("nested").join("root");
    let registry = FileClusterRegistry::new(root.clone());
    let ssm = root.join("output").join("ssm");
    assert_eq!(registry.dir(), ssm);
    assert_eq!(
        registry.describe(),
        format!("file registry at {}", ssm.display())
    );

    registry.register_coordinator(v4(8082)).await.unwrap();
    registry
        .register_backend("backend_9000", v6(9000))
        .await
        .unwrap();

    assert_eq!(
        fs::read_to_string(ssm.join("coordinator.json")).unwrap(),
        r#"{"ip":"127.0.0.1","internal_port":8082,"http_port":8083,"mgmt_port":8084}"#
    );
    assert_eq!(
        fs::read_to_string(ssm.join("backends").join("backend_9000.json")).unwrap(),
        json(v6(9000))
    );
    // No temp files are left behind.
    assert_eq!(names(&ssm), ["backends", "coordinator.json"]);
    assert_eq!(names(&ssm.join("backends")), ["backend_9000.json"]);

    registry.unregister_coordinator().await.unwrap();
    registry.unregister_backend("backend_9000").await.unwrap();
    assert_eq!(names(&ssm), ["backends"]);
    assert!(names(&ssm.join("backends")).is_empty());
}

#[test]
fn the_default_root_is_the_current_directory() {
    // Only describes; writes nothing into the working directory.
    let registry = build_registry(RegistryKind::File, RegistryConfig::default()).unwrap();
    let expected = std::env::current_dir().unwrap().join("output").join("ssm");
    assert_eq!(
        registry.describe(),
        format!("file registry at {}", expected.display())
    );
}

#[tokio::test]
async fn entries_written_by_hand_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FileClusterRegistry::new(dir.path().to_owned());
    let backends = registry.backends_dir();
    fs::create_dir_all(&backends).unwrap();
    // What an operator or a script might write: pretty-printed, trailing newline.
    let pretty = "{\n  \"ip\": \"10.0.0.7\",\n  \"internal_port\": 9000,\n  \
                  \"http_port\": 9001,\n  \"mgmt_port\": 9002\n}\n";
    fs::write(backends.join("by_hand.json"), pretty).unwrap();
    fs::write(registry.coordinator_path(), pretty).unwrap();
    let expected = NodeAddress::new([10, 0, 0, 7].into(), 9000, 9001, 9002);
    assert_eq!(
        registry.discover_backends().await.unwrap(),
        vec![("by_hand".to_owned(), expected)]
    );
    assert_eq!(
        registry.discover_coordinator().await.unwrap(),
        Some(expected)
    );
}

// === tolerant reads ===

#[tokio::test]
async fn bad_and_foreign_entries_are_skipped_with_a_warning_naming_them() {
    let logs = warnings();
    let dir = tempfile::tempdir().unwrap();
    let registry = FileClusterRegistry::new(dir.path().to_owned());
    registry.register_backend("good", v4(9000)).await.unwrap();
    registry
        .register_backend("also_good", v6(9010))
        .await
        .unwrap();
    let backends = registry.backends_dir();

    let huge = format!("{}{}", " ".repeat(5000), json(v4(1)));
    let bad_files = [
        (
            "truncated.json",
            r#"{"ip":"127.0.0.1","internal_po"#.to_owned(),
        ),
        ("empty.json", String::new()),
        (
            "not_an_address.json",
            r#"{"ip":"127.0.0.1","port":1}"#.to_owned(),
        ),
        (
            "extra_field.json",
            r#"{"ip":"127.0.0.1","internal_port":1,"http_port":2,"mgmt_port":3,"secret":"x"}"#
                .to_owned(),
        ),
        (
            "bad_ip.json",
            r#"{"ip":"localhost","internal_port":1,"http_port":2,"mgmt_port":3}"#.to_owned(),
        ),
        ("binary.json", "\u{0}\u{1}\u{2}".to_owned()),
        ("huge.json", huge),
        ("README.txt", "notes".to_owned()),
        ("backend_1.json.bak", json(v4(1))),
        ("bad id.json", json(v4(1))),
    ];
    for (name, contents) in &bad_files {
        fs::write(backends.join(name), contents).unwrap();
    }
    fs::create_dir(backends.join("a_directory.json")).unwrap();

    assert_eq!(
        registry.discover_backends().await.unwrap(),
        vec![
            ("also_good".to_owned(), v6(9010)),
            ("good".to_owned(), v4(9000)),
        ]
    );
    let text = logs.text();
    for name in bad_files
        .iter()
        .map(|(name, _)| *name)
        .chain(["a_directory.json"])
    {
        let path = backends.join(name);
        assert!(
            text.contains(&format!("path={}", path.display())),
            "no warning names {}:\n{text}",
            path.display()
        );
    }
}

#[tokio::test]
async fn a_corrupt_coordinator_entry_reads_as_none_with_a_warning() {
    let logs = warnings();
    let dir = tempfile::tempdir().unwrap();
    let registry = FileClusterRegistry::new(dir.path().to_owned());
    fs::create_dir_all(registry.dir()).unwrap();
    fs::write(registry.coordinator_path(), "{\"ip\":").unwrap();

    assert_eq!(registry.discover_coordinator().await.unwrap(), None);
    let text = logs.text();
    assert!(
        text.contains(&format!("path={}", registry.coordinator_path().display())),
        "{text}"
    );

    // Registering again repairs it.
    registry.register_coordinator(v4(8082)).await.unwrap();
    assert_eq!(
        registry.discover_coordinator().await.unwrap(),
        Some(v4(8082))
    );
}

#[tokio::test]
async fn temp_files_are_ignored_quietly() {
    let logs = warnings();
    let dir = tempfile::tempdir().unwrap();
    let registry = FileClusterRegistry::new(dir.path().to_owned());
    registry.register_backend("good", v4(9000)).await.unwrap();
    let backends = registry.backends_dir();
    // Left by writers that died between write and rename: one torn, one complete.
    let stale = [
        (
            ".good.json.4242.7.00ff00ff00ff00ff.tmp",
            r#"{"ip":"127.0"#.to_owned(),
        ),
        (".other.json.4243.0.0123456789abcdef.tmp", json(v4(1))),
    ];
    for (name, contents) in &stale {
        fs::write(backends.join(name), contents).unwrap();
    }
    assert_eq!(
        registry.discover_backends().await.unwrap(),
        vec![("good".to_owned(), v4(9000))]
    );
    let text = logs.text();
    for (name, _) in &stale {
        assert!(
            !text.contains(name),
            "{name} should not be warned about:\n{text}"
        );
    }
}

// === I/O failures ===

#[tokio::test]
async fn an_unusable_root_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("a_file");
    fs::write(&not_a_dir, "x").unwrap();
    let registry = FileClusterRegistry::new(not_a_dir.clone());

    let err = registry.register_coordinator(v4(8082)).await.unwrap_err();
    assert!(matches!(err, RegistryError::Io { .. }), "{err:?}");
    assert!(!err.is_permanent(), "an I/O failure is worth retrying");
    assert!(
        err.to_string().contains(&not_a_dir.display().to_string()),
        "{err}"
    );
    let err = registry.register_backend("b", v4(1)).await.unwrap_err();
    assert!(matches!(err, RegistryError::Io { .. }), "{err:?}");
    assert!(registry.discover_backends().await.is_err());
    assert!(registry.discover_coordinator().await.is_err());
}

// === contention ===

#[test]
fn a_hundred_threads_registering_at_once_lose_nothing() {
    const WRITERS: u16 = 100;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let start = Arc::new(Barrier::new(usize::from(WRITERS)));
    let threads: Vec<_> = (0..WRITERS)
        .map(|n| {
            let (root, start) = (root.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                // Each thread its own registry and runtime, like separate components would.
                let registry = FileClusterRegistry::new(root);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                start.wait();
                runtime.block_on(async {
                    registry
                        .register_backend(&format!("backend_{n}"), v4(10_000 + n))
                        .await?;
                    // Everyone also fights over the same entries.
                    registry
                        .register_backend("contended", v4(10_000 + n))
                        .await?;
                    registry.register_coordinator(v4(10_000 + n)).await
                })
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap().unwrap();
    }
    check_after_contention(&root, "backend_", 10_000, WRITERS);
}

#[test]
fn a_hundred_processes_registering_at_once_lose_nothing() {
    const CHILDREN: u16 = 100;
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..CHILDREN)
        .map(|n| {
            Command::new(&exe)
                .args([
                    "registry_child_process",
                    "--exact",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env(CHILD_ROOT, dir.path())
                .env(CHILD_INDEX, n.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Every child is started and waiting on stdin; closing all the pipes now releases them
    // together, so their writes overlap.
    for child in &mut children {
        drop(child.stdin.take());
    }
    for (n, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "child {n} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    check_after_contention(dir.path(), "proc_", 20_000, CHILDREN);
}

const CHILD_ROOT: &str = "COLONY_REGISTRY_CHILD_ROOT";
const CHILD_INDEX: &str = "COLONY_REGISTRY_CHILD_INDEX";

/// The child half of `a_hundred_processes_registering_at_once_lose_nothing`, which runs it
/// with `--ignored --exact`. Ignored so that it is not a test of its own; run without its
/// parent it fails rather than pass having checked nothing.
#[test]
#[ignore = "child process of a_hundred_processes_registering_at_once_lose_nothing, which runs it"]
fn registry_child_process() {
    let (Ok(root), Ok(index)) = (std::env::var(CHILD_ROOT), std::env::var(CHILD_INDEX)) else {
        panic!("run only by a_hundred_processes_registering_at_once_lose_nothing, which sets {CHILD_ROOT} and {CHILD_INDEX}");
    };
    let n: u16 = index.parse().unwrap();
    // Wait for the parent's go: our stdin closing.
    let mut go = Vec::new();
    std::io::stdin().read_to_end(&mut go).unwrap();
    let registry = FileClusterRegistry::new(PathBuf::from(root));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let address = v4(20_000 + n);
        registry
            .register_backend(&format!("proc_{n}"), address)
            .await
            .unwrap();
        registry
            .register_backend("contended", address)
            .await
            .unwrap();
        registry.register_coordinator(address).await.unwrap();
    });
}

/// After `writers` writers each registered `{prefix}{n}` at `v4(base + n)` and overwrote
/// `contended` and the coordinator: every entry is there, the contended ones hold one whole
/// written value, and no temp file is left.
fn check_after_contention(root: &Path, prefix: &str, base: u16, writers: u16) {
    let registry = FileClusterRegistry::new(root.to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (backends, coordinator) = runtime.block_on(async {
        (
            registry.discover_backends().await.unwrap(),
            registry.discover_coordinator().await.unwrap(),
        )
    });
    let written: BTreeSet<NodeAddress> = (0..writers).map(|n| v4(base + n)).collect();
    let mut expected: Vec<(String, NodeAddress)> = (0..writers)
        .map(|n| (format!("{prefix}{n}"), v4(base + n)))
        .collect();
    let contended = backends
        .iter()
        .find(|(id, _)| id == "contended")
        .map(|(_, a)| *a);
    let contended = contended.expect("the contended entry exists");
    assert!(written.contains(&contended), "{contended:?}");
    expected.push(("contended".to_owned(), contended));
    expected.sort();
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| !backends.contains(e))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(missing.is_empty(), "lost registrations: {missing:?}");
    assert_eq!(backends, expected);
    assert!(written.contains(&coordinator.unwrap()));
    let leftovers: Vec<String> = names(registry.dir())
        .into_iter()
        .chain(names(&registry.backends_dir()))
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn readers_never_see_a_partial_file() {
    const WRITERS: u16 = 4;
    const WRITES_EACH: u16 = 400;
    let dir = tempfile::tempdir().unwrap();
    let registry = FileClusterRegistry::new(dir.path().to_owned());
    let path = registry.backend_path("contended").unwrap();
    // Short and long forms alternate so a torn or half-truncated file could not pass.
    let written = |n: u16| match n % 2 {
        0 => v4(n),
        _ => v6(n),
    };
    let valid: BTreeSet<NodeAddress> = (0..WRITERS * WRITES_EACH).map(written).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(registry.register_backend("contended", written(0)))
        .unwrap();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let registry = registry.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                for i in 0..WRITES_EACH {
                    runtime
                        .block_on(
                            registry.register_backend("contended", written(w * WRITES_EACH + i)),
                        )
                        .unwrap();
                }
            })
        })
        .collect();

    let mut reads = 0u32;
    while writers.iter().any(|w| !w.is_finished()) {
        // Straight from the file, as `jq` or a script would read it...
        let bytes = fs::read(&path).unwrap();
        let parsed: NodeAddress = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "read {reads} saw a partial file ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert!(valid.contains(&parsed), "{parsed:?}");
        // ...and through discovery.
        let found = runtime.block_on(registry.discover_backends()).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(valid.contains(&found[0].1), "{found:?}");
        reads += 1;
    }
    for writer in writers {
        writer.join().unwrap();
    }
    assert!(reads > 10, "the reader barely ran ({reads} reads)");
}
