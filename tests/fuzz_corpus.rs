//! Replays the fuzz campaign's corpus and every crash it kept (`fuzz/corpus/<target>/`,
//! `fuzz/crashes/<target>/`) through the same entry points the AFL++ targets call
//! (`codec::fuzzing`, `controlplane::fuzzing`), so what the fuzzer learnt, and every bug it
//! found, is checked on every test run without afl. Each entry panics when one of its checks
//! fails; here that panic names the file.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use controlplane::fuzzing::Outcome;

/// Replays one input; `Err` says what was wrong with the outcome.
type Replay = fn(&[u8]) -> Result<(), String>;

/// Each target, and what replaying one input through it must come to.
const TARGETS: [(&str, Replay); 5] = [
    ("codec_text", |data| {
        decoded(codec::fuzzing::codec_text(data))
    }),
    ("codec_binary", |data| {
        decoded(codec::fuzzing::codec_binary(data))
    }),
    (
        "http_bodies",
        |data| match controlplane::fuzzing::http_bodies(data) {
            (_, Outcome::Accepted) => Ok(()),
            (_, Outcome::Refused { status, message }) if (400..500).contains(&status) => {
                if message.is_empty() {
                    Err("a refusal with no message".into())
                } else {
                    Ok(())
                }
            }
            (route, other) => Err(format!("{route:?}: {other:?}")),
        },
    ),
    ("ws_request", |data| {
        let answers = controlplane::fuzzing::ws_request(data);
        // Text that is not UTF-8 closes the socket (1007) and gets no answer.
        let expected = if std::str::from_utf8(data).is_ok() {
            2
        } else {
            0
        };
        if answers.len() == expected {
            Ok(())
        } else {
            Err(format!("{} answers, not {expected}", answers.len()))
        }
    }),
    ("ws_channel_frames", |data| {
        // The entry checks itself (it panics on a finding); what it returns needs no more.
        let _ = controlplane::fuzzing::ws_channel_frames(data);
        Ok(())
    }),
];

/// A decoding ended cleanly or with a connection-ending error that says why.
fn decoded(decoding: codec::fuzzing::Decoding) -> Result<(), String> {
    match decoding.error {
        Some(e) if e.is_empty() => Err("an error with no message".into()),
        _ => Ok(()),
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_crash_input_is_handled_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    for (target, replay) in TARGETS {
        let corpus = files(&root.join("corpus").join(target));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{target}/ is empty or missing: the replay would prove nothing"
        );
        let crashes = files(&root.join("crashes").join(target));
        for path in corpus.iter().chain(&crashes) {
            let data = std::fs::read(path).unwrap();
            match catch_unwind(AssertUnwindSafe(|| replay(&data))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(format!("{}: {e}", path.display())),
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    failures.push(format!("{}: panicked: {message}", path.display()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
