//! The result of a crash run: one JSON object (`--json PATH`, and `run.json` in the run
//! directory) and a table a person reads at a glance.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::ledger::LedgerEntry;
use super::verifier::Findings;

/// The run's statistics file in a run directory (read back by `verify --dir`).
pub const RUN_FILE_NAME: &str = "run.json";

/// What the orchestrator did, apart from what the verifier found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
// Fields added later read as their defaults from an older `run.json`.
#[serde(default)]
pub struct RunStats {
    /// The seed (repeat the plan and the kill schedule with `--seed`).
    pub seed: u64,
    /// `transactional` or `at-least-once`.
    pub delegate: String,
    /// Where the records were kept: `lmdb` or `postgres` (empty in an older `run.json`).
    pub store: String,
    /// Worker processes started, the last clean one included.
    pub runs: u64,
    /// Workers killed with SIGKILL.
    pub kills: u64,
    /// Workers that aborted at an armed fail point.
    pub failpoint_aborts: u64,
    /// Aborts per fail point.
    pub aborts_by_failpoint: BTreeMap<String, u64>,
    /// Delegate panics injected (and survived).
    pub delegate_panics: u64,
    /// Deliveries the delegate refused on purpose (a transient failure) before it
    /// accepted them.
    pub delivery_refusals: u64,
    /// Times the flaky origin went down (its port closed) during the run.
    pub flaky_outages: u64,
    /// Requests the flaky origin answered while it was up.
    pub flaky_requests: u64,
    /// Supervised restarts of session actors, all workers.
    pub supervisor_restarts: u64,
    /// Workers that finished the whole plan before the last run.
    pub finished_early: u64,
    /// Faults of the schedule left unused because a worker finished the plan before its
    /// fault came (that one included).
    pub faults_unused: u64,
    /// Body bytes the origin served.
    pub bytes_downloaded: u64,
    /// Seconds from start to verdict.
    pub wall_s: f64,
    /// Seconds the last clean worker took.
    pub final_run_s: f64,
    /// The expected run the faults were placed over, in seconds (see
    /// [`crate::crash::schedule::Pacer`]).
    pub expected_run_s: f64,
    /// Seconds one fault-free worker took to finish the plan, when a run was measured
    /// first (the test kit does).
    pub measured_run_s: Option<f64>,
    /// Seconds the faulted workers ran after they were ready, all runs.
    pub fault_work_s: f64,
    /// Distinct events (task events, "did finish events", completions) first delivered
    /// by a run that was later killed or aborted.
    pub events_under_faults: u64,
    /// Their share of the distinct events delivered: how much of the work the faults
    /// covered (the rest was done by the last clean run, or by a run that finished).
    pub events_under_faults_share: f64,
    /// The run directory, when it was kept.
    pub dir: Option<String>,
    /// Problems the orchestrator saw (a worker error, a last run that did not finish).
    pub run_violations: Vec<String>,
}

/// The whole report: the run, the verifier's findings and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What the orchestrator did.
    #[serde(flatten)]
    pub run: RunStats,
    /// What the verifier found (its `violations` are merged into the report's).
    #[serde(flatten)]
    pub findings: Findings,
    /// `pass` or `fail`.
    pub verdict: &'static str,
}

impl Report {
    /// Combines the run and the findings; the orchestrator's violations come first.
    pub fn new(run: RunStats, mut findings: Findings) -> Report {
        let mut violations = run.run_violations.clone();
        violations.append(&mut findings.violations);
        findings.violations = violations;
        let verdict = if findings.violations.is_empty() {
            "pass"
        } else {
            "fail"
        };
        Report {
            run,
            findings,
            verdict,
        }
    }

    /// Whether the run passed.
    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }

    /// Writes the JSON object to `path`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// The table for a person.
    pub fn table(&self) -> String {
        let r = &self.run;
        let f = &self.findings;
        let mark = |ok: bool| if ok { "ok" } else { "FAIL" };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "bgsession crash run   seed {}   delegate {}   store {}   {:.1} s",
            r.seed,
            r.delegate,
            if r.store.is_empty() { "lmdb" } else { &r.store },
            r.wall_s
        );
        let rows: Vec<(&str, String, bool)> = vec![
            (
                "plan",
                format!(
                    "{} sessions, {} tasks; {} batches joined a running one, {} tasks via the flaky origin",
                    f.sessions, f.tasks, f.batches_joining, f.tasks_flaky
                ),
                true,
            ),
            (
                "faults",
                format!(
                    "{} kills, {} fail-point aborts, {} delegate panics, {} delivery refusals, {} supervisor restarts, {} runs{}",
                    r.kills,
                    r.failpoint_aborts,
                    r.delegate_panics,
                    r.delivery_refusals,
                    r.supervisor_restarts,
                    r.runs,
                    if r.faults_unused > 0 {
                        format!(
                            " ({} faults unused: the plan finished first)",
                            r.faults_unused
                        )
                    } else {
                        String::new()
                    }
                ),
                true,
            ),
            (
                "flaky origin",
                format!(
                    "down {} times (connections refused), {} requests answered while up",
                    r.flaky_outages, r.flaky_requests
                ),
                true,
            ),
            (
                "coverage",
                format!(
                    "{:.0}% of events delivered by runs later killed or aborted ({}); faults over {:.1} s of work, expected run ~{:.1} s",
                    r.events_under_faults_share * 100.0,
                    r.events_under_faults,
                    r.fault_work_s,
                    r.expected_run_s
                ),
                true,
            ),
            (
                "tasks",
                format!(
                    "{} outcome mismatches, {} lost or unfinished, {} pruned after delivery",
                    f.outcome_mismatches, f.tasks_lost, f.tasks_pruned
                ),
                f.outcome_mismatches == 0 && f.tasks_lost == 0,
            ),
            (
                "events",
                format!(
                    "{} of {} delivered, {} duplicates, {} lost, {} out of order",
                    f.events_delivered,
                    f.events_expected,
                    f.duplicate_events,
                    f.lost_events,
                    f.out_of_order_events
                ),
                f.duplicate_events == 0 && f.lost_events == 0 && f.out_of_order_events == 0,
            ),
            (
                "did finish",
                format!(
                    "{} of {} delivered",
                    f.finish_events_delivered, f.finish_events_expected
                ),
                f.finish_events_delivered == f.finish_events_expected,
            ),
            (
                "completions",
                format!(
                    "{} of {} ran, {} duplicated, {} early",
                    f.completions_run,
                    f.completions_expected,
                    f.completions_duplicated,
                    f.completions_early
                ),
                f.completions_run == f.completions_expected
                    && f.completions_duplicated == 0
                    && f.completions_early == 0,
            ),
            (
                "files",
                format!(
                    "{} checked, {} bad, {} left behind ({} partial files)",
                    f.files_checked, f.files_bad, f.leftover_files, f.partial_files
                ),
                f.files_bad == 0 && f.leftover_files == 0,
            ),
            (
                "origin",
                format!(
                    "{} uploads sent again and suppressed, {:.1} MiB served for {:.1} MiB needed",
                    f.upload_duplicates_at_origin,
                    mib(r.bytes_downloaded),
                    mib(f.bytes_needed)
                ),
                true,
            ),
            (
                "last run",
                format!("{:.1} s without faults", r.final_run_s),
                r.run_violations.is_empty(),
            ),
        ];
        for (name, text, ok) in rows {
            let _ = writeln!(out, "  {:<4} {name:<12} {text}", mark(ok));
        }
        if !f.violations.is_empty() {
            let _ = writeln!(out, "violations:");
            for violation in &f.violations {
                let _ = writeln!(out, "  - {violation}");
            }
        }
        let _ = writeln!(
            out,
            "verdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        out
    }
}

/// How many distinct events (by session and seq) were first delivered by one of
/// `faulted_runs`, and how many distinct events were delivered at all.
pub fn events_under_faults(ledger: &[LedgerEntry], faulted_runs: &BTreeSet<u32>) -> (u64, u64) {
    let mut first_run: BTreeMap<(&str, u64), u32> = BTreeMap::new();
    for entry in ledger {
        first_run
            .entry((entry.session.as_str(), entry.seq))
            .or_insert(entry.run);
    }
    let under = first_run
        .values()
        .filter(|run| faulted_runs.contains(run))
        .count();
    (under as u64, first_run.len() as u64)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crash::ledger::EntryKind;

    fn entry(session: &str, seq: u64, run: u32) -> LedgerEntry {
        LedgerEntry {
            index: 0,
            run,
            session: session.to_owned(),
            generation: 1,
            seq,
            kind: EntryKind::DidFinish,
        }
    }

    /// Each distinct event counts once, for the run that first delivered it: under
    /// faults when that run was killed or aborted.
    #[test]
    fn events_under_faults_count_first_deliveries() {
        let ledger = [
            entry("s", 0, 1),
            entry("s", 1, 2),
            // Delivered again by the clean run: still run 1's.
            entry("s", 0, 3),
            entry("t", 0, 3),
        ];
        let faulted: BTreeSet<u32> = [1, 2].into_iter().collect();
        assert_eq!(events_under_faults(&ledger, &faulted), (2, 3));
        assert_eq!(events_under_faults(&ledger, &BTreeSet::new()), (0, 3));
        assert_eq!(events_under_faults(&[], &faulted), (0, 0));
    }
}
