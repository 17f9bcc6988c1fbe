//! Bad values from the application are validation errors that name what is wrong, before
//! anything is stored: session configuration fields, delivery options, completion names
//! (a newline in one would forge log lines) at build time, at registration and at
//! enqueue.

use session_actor::{
    Delegate, DeliveryOptions, DeliveryPolicy, Error, SessionConfig, TransferRequest,
};
use session_tests::ledger::{self, builder};

fn field_of(error: &Error) -> Option<&'static str> {
    match error {
        Error::InvalidConfig(invalid) => Some(invalid.field),
        _ => None,
    }
}

/// Each unusable configuration field is refused with its name; nothing is stored.
#[tokio::test]
async fn bad_configuration_fields_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sessions = builder(dir.path()).open().expect("open");
    let cases: Vec<(SessionConfig, &str)> = vec![
        (
            SessionConfig {
                attempts_max: 0,
                ..SessionConfig::default()
            },
            "attempts_max",
        ),
        (
            SessionConfig {
                retry_delay_ms_base: 10,
                retry_delay_ms_max: 5,
                ..SessionConfig::default()
            },
            "retry_delay_ms_base",
        ),
        (
            SessionConfig {
                deadline_s: 0,
                ..SessionConfig::default()
            },
            "deadline_s",
        ),
        (
            SessionConfig {
                delivery_retry_ms_base: 100,
                delivery_retry_ms_max: 50,
                ..SessionConfig::default()
            },
            "delivery_retry_ms_base",
        ),
        (
            SessionConfig {
                delivery_policy: DeliveryPolicy::DeadLetter { attempts_max: 0 },
                ..SessionConfig::default()
            },
            "delivery_policy",
        ),
        (
            SessionConfig {
                wait_retry_ms_max: 0,
                ..SessionConfig::default()
            },
            "wait_retry_ms_max",
        ),
    ];
    for (config, field) in cases {
        let result = sessions
            .session("bad", config, Delegate::transactional(ledger::record))
            .await;
        let error = result.expect_err("refused");
        assert_eq!(field_of(&error), Some(field), "{error}");
        assert!(error.to_string().contains(field), "{error}");
        assert!(!error.to_string().contains("invariant"), "{error}");
    }
    assert!(
        sessions
            .snapshot()
            .expect("snapshot")
            .sessions()
            .expect("sessions")
            .is_empty(),
        "nothing was stored"
    );
    sessions.shutdown().await.expect("shutdown");
}

/// Completion names are checked like identifiers, at build time, at registration and at
/// enqueue; delivery options name their field.
#[tokio::test]
async fn bad_completion_names_and_options_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let forged = "done\n2026-12-02T00:00:00Z INFO forged";
    let built = builder(dir.path())
        .completion(forged, ledger::complete)
        .open();
    assert!(
        matches!(&built, Err(Error::InvalidCompletion { name, .. }) if name == forged),
        "{built:?}"
    );
    let options = builder(dir.path())
        .delivery_options(DeliveryOptions {
            unit_budget_ms: 0,
            ..DeliveryOptions::default()
        })
        .open();
    assert_eq!(
        options.as_ref().err().and_then(field_of),
        Some("unit_budget_ms")
    );

    let sessions = builder(dir.path()).open().expect("open");
    assert!(matches!(
        sessions.register_completion("has space", ledger::complete),
        Err(Error::InvalidCompletion { .. })
    ));
    let session = sessions
        .session(
            "s",
            SessionConfig::default(),
            Delegate::transactional(ledger::record),
        )
        .await
        .expect("session");
    let request = TransferRequest::download("http://127.0.0.1:9/x");
    for name in ["bad\nname", "", "quote\"", "not-registered"] {
        let refused = session
            .enqueue_batch(vec![("t".into(), request.clone())], Some((name, vec![])))
            .await;
        assert!(
            matches!(&refused, Err(Error::InvalidCompletion { .. })),
            "{name:?}: {refused:?}"
        );
    }
    assert!(session.tasks().expect("tasks").is_empty(), "nothing stored");
    sessions.shutdown().await.expect("shutdown");
}
