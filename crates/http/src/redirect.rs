//! Following redirects in the engine: reqwest's client is built with `Policy::none()`, so
//! every hop is a request the engine builds itself, and the rules are ours to state.
//!
//! - Followed: 301, 302, 303, 307 and 308 (the redirect statuses of the Fetch standard);
//!   other 3xx are answers ([`crate::classify_status`]).
//! - At most [`crate::EngineConfig::redirects_max`] redirects per attempt, and a hop that
//!   asks for a method and URL already requested in the chain is a loop: both fail as
//!   [`FailReason::TooManyRedirects`].
//! - A target must be `http` or `https`, parse (relative ones are resolved against the
//!   current URL), name a host, carry no user name or password, and fit
//!   [`crate::Limits::url_bytes_max`]. Anything else (`file:`, `ftp:`, `data:`,
//!   `mailto:`, a missing, empty or unparsable `Location`) fails as
//!   [`FailReason::InvalidRedirect`].
//! - Methods as browsers and reqwest do: 303 turns any method but HEAD into a GET without
//!   body; 301 and 302 turn a POST into a GET without body; everything else keeps its
//!   method and body (a [`crate::Body::Bytes`] is sent again, a [`crate::Body::File`] is
//!   re-opened and streamed from its start). When the body is dropped, so are the headers
//!   that describe it (`Content-Type`, `Content-Encoding`, `Content-Language`,
//!   `Content-Location`). The engine's own headers (a download's `Range` and `If-Range`,
//!   the target's `Idempotency-Key`, `Accept-Encoding: identity`) go with every hop.
//! - Once a hop leaves the original request's origin (scheme, host or port differ), every
//!   sensitive header ([`TransferRequest::is_sensitive`]: `Authorization`,
//!   `Proxy-Authorization`, `Cookie` and the names the request marked) is stripped for the
//!   rest of the chain, even if it comes back: a host the chain passed through may have
//!   chosen where it goes next.
//! - The attempt keeps the connection permits of the original host for the whole chain.

use std::sync::Arc;

use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue, LOCATION};
use tokio::sync::watch;

use crate::classify::{Classified, FailReason};
use crate::engine::{Inner, Progress};
use crate::redact::redact_parsed;
use crate::request::{Method, Target, TransferRequest};
use crate::transport::{self, Activity};
use crate::upload::{self, FileBodyReport};

/// Headers that describe a request body, dropped with it (the Fetch standard's
/// "request-body-header names").
const BODY_HEADERS: [&str; 4] = [
    "content-encoding",
    "content-language",
    "content-location",
    "content-type",
];

/// Whether the engine follows a response with this status.
pub(crate) fn is_followed(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Whether a header describes the request body.
pub(crate) fn is_body_header(name: &str) -> bool {
    BODY_HEADERS
        .iter()
        .any(|body_header| body_header.eq_ignore_ascii_case(name))
}

/// One request of a redirect chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hop {
    pub(crate) method: Method,
    pub(crate) url: Url,
    /// Whether the request's body (and the headers describing it) is sent; false for good
    /// once a redirect turned the request into a GET.
    pub(crate) with_body: bool,
    /// Whether sensitive headers are left out; true for good once the chain left the
    /// original origin.
    pub(crate) strip_sensitive: bool,
}

impl Hop {
    /// The request as the caller made it.
    pub(crate) fn first(method: Method, url: Url) -> Hop {
        Hop {
            method,
            url,
            with_body: true,
            strip_sensitive: false,
        }
    }
}

/// Why a redirect is not followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    TooMany {
        redirects_max: usize,
    },
    Loop,
    MissingLocation,
    /// The `Location` is not a URL; the parser's reason, which quotes nothing of it.
    UnparsableLocation(String),
    Scheme(String),
    Credentials,
    TooLong {
        bytes: usize,
        max: usize,
    },
}

impl Refused {
    /// The outcome of the attempt, naming the response that asked for the redirect.
    pub(crate) fn classified(&self, status: u16, from: &Url) -> Classified {
        let from = redact_parsed(from);
        let (reason, message) = match self {
            Refused::TooMany { redirects_max } => (
                FailReason::TooManyRedirects,
                format!("more than {redirects_max} redirects (the last a {status} from {from})"),
            ),
            Refused::Loop => (
                FailReason::TooManyRedirects,
                format!("redirect loop: the {status} from {from} asks for a request already made"),
            ),
            Refused::MissingLocation => (
                FailReason::InvalidRedirect,
                format!("the {status} from {from} has no Location"),
            ),
            Refused::UnparsableLocation(reason) => (
                FailReason::InvalidRedirect,
                format!("the Location of the {status} from {from} is not a usable URL: {reason}"),
            ),
            Refused::Scheme(scheme) => (
                FailReason::InvalidRedirect,
                format!(
                    "the {status} from {from} redirects to a {scheme:?} URL; only http and \
                     https are followed"
                ),
            ),
            Refused::Credentials => (
                FailReason::InvalidRedirect,
                format!("the {status} from {from} redirects to a URL carrying credentials"),
            ),
            Refused::TooLong { bytes, max } => (
                FailReason::InvalidRedirect,
                format!(
                    "the {status} from {from} redirects to a URL of {bytes} bytes, over the \
                     limit of {max}"
                ),
            ),
        };
        Classified::failed(reason, message)
    }
}

/// The redirects of one attempt so far.
#[derive(Debug)]
pub(crate) struct Chain {
    original: Url,
    /// Every request made, first included.
    requested: Vec<(Method, Url)>,
    redirects_max: usize,
    url_bytes_max: usize,
}

impl Chain {
    pub(crate) fn new(first: &Hop, redirects_max: usize, url_bytes_max: usize) -> Chain {
        let mut url = first.url.clone();
        url.set_fragment(None);
        Chain {
            original: first.url.clone(),
            requested: vec![(first.method, url)],
            redirects_max,
            url_bytes_max,
        }
    }

    /// The hop that follows `current`, which was answered `status` (a followed one) with
    /// `location`.
    pub(crate) fn next(
        &mut self,
        current: &Hop,
        status: u16,
        location: Option<&HeaderValue>,
    ) -> Result<Hop, Refused> {
        // `requested` holds the first request and one per redirect followed.
        if self.requested.len() > self.redirects_max {
            return Err(Refused::TooMany {
                redirects_max: self.redirects_max,
            });
        }
        let mut url = self.target(&current.url, location)?;
        // Fragments are never sent: `#a` and `#b` are the same request.
        url.set_fragment(None);
        let (method, with_body) = match (status, current.method) {
            (303, Method::Head) => (Method::Head, false),
            (303, _) | (301 | 302, Method::Post) => (Method::Get, false),
            _ => (current.method, current.with_body),
        };
        if self
            .requested
            .iter()
            .any(|(seen_method, seen_url)| *seen_method == method && *seen_url == url)
        {
            return Err(Refused::Loop);
        }
        self.requested.push((method, url.clone()));
        let strip_sensitive = current.strip_sensitive || !same_origin(&self.original, &url);
        Ok(Hop {
            method,
            url,
            with_body,
            strip_sensitive,
        })
    }

    /// The URL a `Location` names, if the engine may follow it.
    fn target(&self, base: &Url, location: Option<&HeaderValue>) -> Result<Url, Refused> {
        let location = location
            .ok_or(Refused::MissingLocation)?
            .to_str()
            .map_err(|_| Refused::UnparsableLocation("not visible ASCII".to_owned()))?
            .trim();
        if location.is_empty() {
            return Err(Refused::MissingLocation);
        }
        let url = base
            .join(location)
            .map_err(|error| Refused::UnparsableLocation(error.to_string()))?;
        match url.scheme() {
            "http" | "https" => {}
            other => return Err(Refused::Scheme(other.to_owned())),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(Refused::UnparsableLocation("no host".to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused::Credentials);
        }
        let bytes = url.as_str().len();
        if bytes > self.url_bytes_max {
            return Err(Refused::TooLong {
                bytes,
                max: self.url_bytes_max,
            });
        }
        Ok(url)
    }
}

/// Same scheme, host and port (the default port of the scheme when none is written).
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The final response of a redirect chain.
#[derive(Debug)]
pub(crate) struct Answered {
    pub(crate) response: reqwest::Response,
    /// The file body of the last request that carried one (an upload), still counting
    /// the bytes the client takes from it.
    pub(crate) file_body: Option<Arc<FileBodyReport>>,
}

/// Sends `request` to `url` and follows its redirects; returns the final response (whose
/// status is not a followed redirect). `extra` headers (a download's range) go with every
/// hop; `progress` sees an upload body's bytes, from zero on each hop that sends it.
pub(crate) async fn send(
    engine: &Inner,
    request: &TransferRequest,
    url: Url,
    target: &Target,
    extra: &[(HeaderName, String)],
    progress: Option<&watch::Sender<Progress>>,
) -> Result<Answered, Classified> {
    let config = &engine.config;
    let activity = Activity::new();
    let mut hop = Hop::first(request.method, url);
    let mut chain = Chain::new(&hop, config.redirects_max, config.limits.url_bytes_max);
    let mut file_body = None;
    loop {
        let builder = transport::request_builder(&engine.client, request, &hop, target, extra);
        let (builder, report) = if hop.with_body {
            upload::attach_body(builder, &request.body, config, &activity, progress).await?
        } else {
            (builder, None)
        };
        let sent = transport::send(
            builder,
            config.read_idle_timeout,
            config.connect_timeout,
            &activity,
        )
        .await;
        // A failure to read our own file surfaces as a request error: say what it was.
        if let Some(message) = report.as_ref().and_then(|report| report.local_failure()) {
            return Err(Classified::failed(FailReason::LocalDisk, message));
        }
        if report.is_some() {
            file_body = report;
        }
        let response = sent?;
        let status = response.status().as_u16();
        if !is_followed(status) {
            return Ok(Answered {
                response,
                file_body,
            });
        }
        let next = chain
            .next(&hop, status, response.headers().get(LOCATION))
            .map_err(|refused| refused.classified(status, &hop.url))?;
        tracing::debug!(
            status,
            from = %redact_parsed(&hop.url),
            to = %redact_parsed(&next.url),
            method = ?next.method,
            sensitive_headers_stripped = next.strip_sensitive,
            "following a redirect"
        );
        hop = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).expect("a valid URL")
    }

    fn location(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).expect("a valid header value")
    }

    fn chain(first: &Hop) -> Chain {
        Chain::new(first, 10, 8192)
    }

    /// 303 makes a GET without body (HEAD stays HEAD); 301 and 302 make a POST a GET but
    /// keep other methods and their bodies; 307 and 308 keep method and body.
    #[test]
    fn methods_follow_the_browser_rules() {
        let cases = [
            (303, Method::Post, Method::Get, false),
            (303, Method::Put, Method::Get, false),
            (303, Method::Head, Method::Head, false),
            (301, Method::Post, Method::Get, false),
            (302, Method::Post, Method::Get, false),
            (302, Method::Put, Method::Put, true),
            (301, Method::Get, Method::Get, true),
            (307, Method::Post, Method::Post, true),
            (308, Method::Put, Method::Put, true),
        ];
        for (status, from, method, with_body) in cases {
            let first = Hop::first(from, url("http://a.example/x"));
            let next = chain(&first)
                .next(&first, status, Some(&location("/y")))
                .expect("followed");
            assert_eq!(
                (next.method, next.with_body),
                (method, with_body),
                "{status} {from:?}"
            );
            assert_eq!(next.url.as_str(), "http://a.example/y");
        }
    }

    /// A dropped body stays dropped: a 307 after a 303 does not bring it back.
    #[test]
    fn a_dropped_body_stays_dropped() {
        let first = Hop::first(Method::Post, url("http://a.example/x"));
        let mut chain = chain(&first);
        let second = chain.next(&first, 303, Some(&location("/y"))).expect("303");
        let third = chain
            .next(&second, 307, Some(&location("/z")))
            .expect("307");
        assert_eq!((third.method, third.with_body), (Method::Get, false));
    }

    /// Leaving the original origin by scheme, host or port strips sensitive headers for the
    /// rest of the chain, also after coming back; staying on it (default port written out,
    /// host in another case) does not.
    #[test]
    fn cross_origin_strips_for_the_rest_of_the_chain() {
        let first = Hop::first(Method::Get, url("http://a.example/x"));
        for (target, stripped) in [
            ("http://a.example:80/y", false),
            ("http://A.EXAMPLE/y", false),
            ("/relative", false),
            ("https://a.example/y", true),
            ("http://b.example/y", true),
            ("http://a.example:8080/y", true),
        ] {
            let next = chain(&first)
                .next(&first, 302, Some(&location(target)))
                .expect("followed");
            assert_eq!(next.strip_sensitive, stripped, "{target}");
        }
        let mut chain = chain(&first);
        let away = chain
            .next(&first, 302, Some(&location("http://b.example/y")))
            .expect("away");
        let back = chain
            .next(&away, 302, Some(&location("http://a.example/z")))
            .expect("back");
        assert!(back.strip_sensitive);
    }

    /// Targets that are not http(s) URLs with a host and no credentials are refused, each
    /// with its reason, and all fail as `InvalidRedirect`.
    #[test]
    fn unusable_targets_are_refused() {
        let first = Hop::first(Method::Get, url("http://a.example/x"));
        let cases: [(Option<&str>, Refused); 9] = [
            (Some("file:///etc/passwd"), Refused::Scheme("file".into())),
            (Some("ftp://a.example/f"), Refused::Scheme("ftp".into())),
            (Some("data:text/plain,hi"), Refused::Scheme("data".into())),
            (
                Some("mailto:a@example.invalid"),
                Refused::Scheme("mailto".into()),
            ),
            (
                Some("http://a.example:99999/"),
                Refused::UnparsableLocation("invalid port number".into()),
            ),
            (Some("http://u:p@b.example/"), Refused::Credentials),
            (Some("   "), Refused::MissingLocation),
            (None, Refused::MissingLocation),
            (
                Some(&format!("/{}", "a".repeat(9000))),
                Refused::TooLong {
                    bytes: "http://a.example/".len() + 9000,
                    max: 8192,
                },
            ),
        ];
        for (target, expected) in cases {
            let header = target.map(location);
            let refused = chain(&first)
                .next(&first, 302, header.as_ref())
                .expect_err("refused");
            assert_eq!(refused, expected, "{target:?}");
            let outcome = refused.classified(302, &first.url);
            assert!(
                matches!(
                    outcome,
                    Classified::Failed {
                        reason: FailReason::InvalidRedirect,
                        ..
                    }
                ),
                "{outcome:?}"
            );
        }
        let binary = HeaderValue::from_bytes(b"/\xff").expect("obs-text is a valid value");
        assert!(matches!(
            chain(&first).next(&first, 302, Some(&binary)),
            Err(Refused::UnparsableLocation(_))
        ));
    }

    /// The limit counts redirects followed, and a request repeated with the same method is
    /// a loop while the same URL with another method is not.
    #[test]
    fn limits_and_loops() {
        let first = Hop::first(Method::Get, url("http://a.example/0"));
        let mut chain = Chain::new(&first, 2, 8192);
        let one = chain.next(&first, 302, Some(&location("/1"))).expect("1");
        let two = chain.next(&one, 302, Some(&location("/2"))).expect("2");
        assert_eq!(
            chain.next(&two, 302, Some(&location("/3"))),
            Err(Refused::TooMany { redirects_max: 2 })
        );

        let first = Hop::first(Method::Post, url("http://a.example/form"));
        let mut chain = Chain::new(&first, 10, 8192);
        let get = chain
            .next(&first, 303, Some(&location("/form#done")))
            .expect("a GET of the same URL is another request");
        assert_eq!(
            chain.next(&get, 302, Some(&location("/form"))),
            Err(Refused::Loop)
        );
    }
}
