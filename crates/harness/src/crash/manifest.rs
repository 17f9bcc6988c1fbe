//! A plan from a manifest, to run the crash loop against someone else's server:
//!
//! ```json
//! {"sessions":[{"id":"photos","tasks":[
//!   {"id":"a","kind":"download","url":"http://127.0.0.1:8080/a","sha256":"...","expect":"success"},
//!   {"id":"b","kind":"upload","url":"http://127.0.0.1:8080/up/b","file":"b.bin","expect":"success"},
//!   {"id":"c","kind":"data","url":"http://127.0.0.1:8080/ping","expect":"any"}]}]}
//! ```
//!
//! `expect` is `success`, `rejected`, `failed` or `any` (default `success`); a relative
//! upload `file` is relative to the manifest's directory. Each session gets one
//! generation. The checksums and expectations are the manifest's; there are no origin
//! counters.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use session_store::{IdentifierKind, validate_identifier};

use super::plan::{
    Expect, Plan, PlanSource, PlannedConfig, PlannedGeneration, PlannedKind, PlannedSession,
    PlannedTask, SESSIONS_MAX, TASKS_PER_SESSION_MAX,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    sessions: Vec<ManifestSession>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestSession {
    id: String,
    tasks: Vec<ManifestTask>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestTask {
    id: String,
    kind: String,
    url: String,
    sha256: Option<String>,
    file: Option<String>,
    expect: Option<Expect>,
}

/// Reads a manifest into a plan against `origin`.
///
/// # Errors
/// A missing or malformed manifest: unknown fields or kinds, invalid identifiers,
/// duplicate identifiers, an upload without a file, a malformed SHA-256.
pub fn load(path: &Path, origin: &str, seed: u64) -> anyhow::Result<Plan> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: Manifest =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    if manifest.sessions.is_empty() || manifest.sessions.len() > SESSIONS_MAX {
        bail!("a manifest needs 1 to {SESSIONS_MAX} sessions");
    }
    let mut session_ids = BTreeSet::new();
    let mut sessions = Vec::with_capacity(manifest.sessions.len());
    for session in manifest.sessions {
        validate_identifier(IdentifierKind::Session, &session.id)?;
        if !session_ids.insert(session.id.clone()) {
            bail!("session {} appears twice", session.id);
        }
        if session.tasks.is_empty() || session.tasks.len() > TASKS_PER_SESSION_MAX {
            bail!(
                "session {} needs 1 to {TASKS_PER_SESSION_MAX} tasks",
                session.id
            );
        }
        let mut task_ids = BTreeSet::new();
        let mut tasks = Vec::with_capacity(session.tasks.len());
        for task in session.tasks {
            validate_identifier(IdentifierKind::Task, &task.id)?;
            if !task_ids.insert(task.id.clone()) {
                bail!("task {}/{} appears twice", session.id, task.id);
            }
            if let Some(sha256) = &task.sha256
                && !(sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                bail!(
                    "task {}/{}: sha256 must be 64 hexadecimal digits",
                    session.id,
                    task.id
                );
            }
            let kind = match task.kind.as_str() {
                "download" => PlannedKind::Download {
                    sha256: task.sha256.map(|hex| hex.to_ascii_lowercase()),
                    expected_bytes: None,
                },
                "upload" => {
                    let Some(file) = task.file else {
                        bail!("upload {}/{} needs a file", session.id, task.id);
                    };
                    PlannedKind::Upload {
                        file: base.join(file),
                    }
                }
                "data" => PlannedKind::Data,
                other => bail!(
                    "task {}/{}: kind {other:?} is not download, upload or data",
                    session.id,
                    task.id
                ),
            };
            tasks.push(PlannedTask {
                id: task.id,
                url: task.url,
                kind,
                expect: task.expect.unwrap_or(Expect::Success),
                object: None,
                bytes: None,
                fault: None,
            });
        }
        sessions.push(PlannedSession {
            id: session.id,
            generations: vec![PlannedGeneration {
                number: 1,
                tasks,
                joins: false,
            }],
        });
    }
    Ok(Plan {
        seed,
        source: PlanSource::Manifest {
            path: path.to_path_buf(),
        },
        origin: origin.to_owned(),
        config: PlannedConfig::default(),
        sessions,
        faults: super::plan::PlanFaults::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed manifest becomes a one-generation plan; a malformed one is refused
    /// with a reason.
    #[test]
    fn manifests_parse_and_are_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("m.json");
        std::fs::write(
            &path,
            r#"{"sessions":[{"id":"a","tasks":[
                {"id":"x","kind":"download","url":"http://127.0.0.1:1/x","sha256":"AB00000000000000000000000000000000000000000000000000000000000000","expect":"success"},
                {"id":"y","kind":"upload","url":"http://127.0.0.1:1/y","file":"y.bin","expect":"any"}]}]}"#,
        )
        .expect("write");
        let plan = load(&path, "http://127.0.0.1:1", 5).expect("valid manifest");
        assert_eq!(plan.task_count(), 2);
        assert_eq!(plan.sessions[0].generations.len(), 1);
        match &plan.sessions[0].generations[0].tasks[1].kind {
            PlannedKind::Upload { file } => assert_eq!(file, &dir.path().join("y.bin")),
            other => panic!("expected an upload, got {other:?}"),
        }
        for bad in [
            r#"{"sessions":[]}"#,
            r#"{"sessions":[{"id":"../a","tasks":[{"id":"x","kind":"data","url":"http://h/"}]}]}"#,
            r#"{"sessions":[{"id":"a","tasks":[{"id":"x","kind":"upload","url":"http://h/"}]}]}"#,
            r#"{"sessions":[{"id":"a","tasks":[{"id":"x","kind":"ftp","url":"http://h/"}]}]}"#,
            r#"{"sessions":[{"id":"a","tasks":[{"id":"x","kind":"data","url":"http://h/","color":1}]}]}"#,
        ] {
            std::fs::write(&path, bad).expect("write");
            assert!(load(&path, "http://h", 1).is_err(), "{bad}");
        }
    }
}
