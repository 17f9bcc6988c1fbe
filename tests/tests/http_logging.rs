//! No secret reaches a log line: every line the process formats at TRACE, for every
//! target (session-http's and session-actor's own, and reqwest's `log` records bridged by
//! `LogTracer`), with span fields, is captured while the engine, then `Sessions`, run
//! transfers whose URLs and headers carry secrets. In its own test binary because it installs the global subscriber and logger.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use session_harness::origin::{Origin, OriginConfig};
use session_http::{Classified, Engine, EngineConfig, Target, TransferRequest};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

/// Every secret of the scenario; none may appear in what is captured.
const SECRETS: [&str; 9] = [
    "amz-signature-secret-1",
    "token-secret-2",
    "target-signature-secret-3",
    "bearer-secret-4",
    "api-key-secret-5",
    "rejected-token-secret-6",
    "retry-token-secret-7",
    "refused-token-secret-8",
    "ftp-token-secret-9",
];

/// Everything the subscriber writes, kept in memory.
#[derive(Debug, Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut buffer = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

fn install(captured: &Captured) {
    tracing_log::LogTracer::init().expect("the only logger of this test binary");
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_span_events(FmtSpan::FULL)
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .expect("the only subscriber of this test binary");
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// A redirected download with secrets in its query, its redirect target's query, an
/// Authorization header and a marked header; a 404; a 503; a refused connection; and a
/// redirect to an `ftp:` URL, all with secret queries, leave no secret in any captured
/// line (reqwest's and hyper's included, span fields included), in the `Debug` of the
/// requests, or in the `Debug` of any outcome.
#[tokio::test]
async fn no_secret_reaches_a_log_line() {
    let captured = Captured::default();
    install(&captured);
    let first = Origin::bind(OriginConfig { seed: 5, port: 0 })
        .await
        .expect("the origin binds");
    let second = Origin::bind(OriginConfig { seed: 5, port: 0 })
        .await
        .expect("the origin binds");
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::new(EngineConfig {
        connect_timeout: Duration::from_secs(5),
        read_idle_timeout: Duration::from_secs(5),
        proxy_from_environment: false,
        ..EngineConfig::default()
    })
    .expect("engine");

    let moved = second.url(&format!(
        "/objects/logged?size=5000&X-Amz-Signature={}",
        SECRETS[2]
    ));
    let ftp = format!("ftp://127.0.0.1/f?token={}", SECRETS[8]);
    let requests = [
        TransferRequest::download(first.url(&format!(
            "/redirect?to={}&X-Amz-Signature={}&token={}",
            percent(&moved),
            SECRETS[0],
            SECRETS[1]
        )))
        .with_header("Authorization", format!("Bearer {}", SECRETS[3]))
        .with_sensitive_header("X-Api-Key", SECRETS[4]),
        TransferRequest::download(first.url(&format!("/objects/none?token={}", SECRETS[5]))),
        TransferRequest::download(first.url(&format!(
            "/objects/busy?size=10&fault=status:503:1&token={}",
            SECRETS[6]
        ))),
        TransferRequest::download(format!(
            "http://127.0.0.1:{dead_port}/x?token={}",
            SECRETS[7]
        )),
        TransferRequest::download(first.url(&format!(
            "/redirect?to={}&token={}",
            percent(&ftp),
            SECRETS[8]
        ))),
    ];
    let mut shown = String::new();
    let mut outcomes = Vec::new();
    for (index, request) in requests.iter().enumerate() {
        let target = Target {
            download_dir: dir.path().to_owned(),
            name: format!("logged-{index}"),
            idempotency_key: None,
        };
        let outcome = engine.run(request, &target, None).await;
        shown.push_str(&format!("{request:?}\n{outcome:?}\n"));
        outcomes.push(outcome);
    }

    // The scenario happened as described, so the lines below are about it.
    assert!(
        matches!(&outcomes[0], Classified::Success(_)),
        "{outcomes:?}"
    );
    assert!(matches!(&outcomes[1], Classified::Rejected(r) if r.status == 404));
    assert!(matches!(&outcomes[2], Classified::Retry { .. }));
    assert!(matches!(&outcomes[3], Classified::Retry { .. }));
    assert!(matches!(&outcomes[4], Classified::Failed { .. }));
    let Classified::Retry { message, .. } = &outcomes[3] else {
        unreachable!("checked above");
    };
    assert!(message.contains("?<redacted>"), "{message}");

    // The same transfers through `Sessions`: the actors' logs and spans, the stored
    // records and the outcomes the application sees.
    let sessions = session_actor::Sessions::builder(dir.path().join("root"))
        .engine_config(EngineConfig {
            connect_timeout: Duration::from_secs(5),
            read_idle_timeout: Duration::from_secs(5),
            proxy_from_environment: false,
            ..EngineConfig::default()
        })
        .open()
        .expect("open");
    let config = session_actor::SessionConfig {
        attempts_max: 2,
        retry_delay_ms_base: 10,
        retry_delay_ms_max: 50,
        // The refused port must fail after its attempts, not wait for connectivity.
        wait_for_connectivity: false,
        ..session_actor::SessionConfig::default()
    };
    let deliveries = |delivery: &session_actor::Delivery,
                      _: &mut session_actor::WriteScope<'_>|
     -> Result<(), session_actor::DelegateError> {
        tracing::info!(delivery = ?delivery, "the test's delegate got");
        Ok(())
    };
    let session = sessions
        .session(
            "logged",
            config,
            session_actor::Delegate::transactional(deliveries),
        )
        .await
        .expect("session");
    let batch = session
        .enqueue_batch(
            requests
                .iter()
                .enumerate()
                .map(|(index, request)| (format!("t{index}"), request.clone()))
                .collect(),
            None,
        )
        .await
        .expect("enqueue");
    for handle in batch.tasks() {
        let outcome = handle.outcome().await.expect("outcome");
        shown.push_str(&format!("{outcome:?}\n"));
    }
    batch.finished().await.expect("the generation ends");
    shown.push_str(&format!("{:?}\n", session.tasks().expect("tasks")));
    shown.push_str(&format!("{:?}\n", session.status().await.expect("status")));
    let snapshot = sessions.snapshot().expect("snapshot");
    shown.push_str(&format!(
        "{:?}\n",
        snapshot.tasks(session.id()).expect("records")
    ));
    drop(snapshot);
    sessions.shutdown().await.expect("shutdown");

    let text = captured.text();
    // What was captured covers the engine's lines, its span fields, and reqwest's `log`
    // records: a secret-free capture of nothing would prove nothing.
    for expected in [
        "attempt starts",
        "following a redirect",
        "attempt{",
        "?<redacted>",
        "reqwest::connect",
        "session{id=logged}",
        "the test's delegate got",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} not captured:\n{text}"
        );
    }
    for output in [&text, &shown] {
        assert!(
            !output.contains("<redacted><redacted>"),
            "redacted twice:\n{output}"
        );
    }
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
        assert!(
            !shown.contains(secret),
            "{secret} in a Debug output:\n{shown}"
        );
    }
}
