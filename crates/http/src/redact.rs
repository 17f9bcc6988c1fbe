//! Keeping secrets out of logs and messages. A signed URL carries its secret in the query
//! (`X-Amz-Signature=...`, `token=...`), and reqwest repeats the whole URL in its errors
//! ("error sending request for url (http://...?token=...)"), so every URL the crate shows
//! goes through [`redact_url`], and every text that may quote one (error chains) through
//! [`redact_urls_in`].

use std::fmt::Write as _;

/// What a query becomes.
const REDACTED_QUERY: &str = "?<redacted>";
/// What an unparsable URL becomes: nothing of it is shown, since its parts are unknown.
const UNPARSABLE_URL: &str = "<unparsable URL>";
/// The schemes whose URLs [`redact_urls_in`] finds in a text.
const URL_STARTS: [&str; 2] = ["http://", "https://"];

/// A URL as it may be shown: scheme, host, port and path; a query becomes `?<redacted>`;
/// the fragment and any user name or password are dropped. A string that does not parse
/// as a URL shows as `<unparsable URL>`.
///
/// ```
/// use session_http::redact_url;
///
/// assert_eq!(
///     redact_url("https://user:pw@cdn.example:8443/a/b.iso?X-Amz-Signature=abc#part"),
///     "https://cdn.example:8443/a/b.iso?<redacted>"
/// );
/// assert_eq!(redact_url("http://127.0.0.1/plain"), "http://127.0.0.1/plain");
/// ```
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => redact_parsed(&parsed),
        Err(_) => UNPARSABLE_URL.to_owned(),
    }
}

/// [`redact_url`] of a parsed URL.
pub(crate) fn redact_parsed(url: &reqwest::Url) -> String {
    let mut shown = String::with_capacity(url.as_str().len().min(256));
    shown.push_str(url.scheme());
    shown.push(':');
    if let Some(host) = url.host_str() {
        shown.push_str("//");
        shown.push_str(host);
        if let Some(port) = url.port() {
            // Writing to a String cannot fail.
            let _ = write!(shown, ":{port}");
        }
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str(REDACTED_QUERY);
    }
    shown
}

/// `text` with every `http://` or `https://` URL in it (any case) replaced by its
/// [`redact_url`] form, for error messages that quote the URL they failed on. A URL runs
/// to the next whitespace, quote or angle bracket; closing punctuation at its end
/// (`)` in reqwest's "for url (...)") stays outside. A URL that does not parse is cut
/// before its query, fragment and user information all the same.
///
/// ```
/// use session_http::redact_urls_in;
///
/// assert_eq!(
///     redact_urls_in("error sending request for url (http://127.0.0.1:9/x?token=s3cret)"),
///     "error sending request for url (http://127.0.0.1:9/x?<redacted>)"
/// );
/// ```
pub fn redact_urls_in(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_url_start(rest) {
        shown.push_str(&rest[..start]);
        let candidate = &rest[start..];
        let run = candidate
            .find(|c: char| c.is_whitespace() || c.is_control() || "\"'<>`\\".contains(c))
            .unwrap_or(candidate.len());
        let url = candidate[..run].trim_end_matches(|c: char| ")]}.,;:!".contains(c));
        let after = &candidate[url.len()..];
        // A URL redacted before (a message built from `redact_url`) stays as it is: its
        // `<` would otherwise end the URL and leave a second `<redacted>` behind.
        let already = REDACTED_QUERY.strip_prefix('?').unwrap_or(REDACTED_QUERY);
        if let (Some(bare), Some(remaining)) = (url.strip_suffix('?'), after.strip_prefix(already))
        {
            shown.push_str(&redact_embedded(bare));
            shown.push_str(REDACTED_QUERY);
            rest = remaining;
            continue;
        }
        shown.push_str(&redact_embedded(url));
        rest = after;
    }
    shown.push_str(rest);
    shown
}

/// Where the first `http://` or `https://` of `text` starts (ASCII case-insensitive).
fn find_url_start(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len()).find(|&index| {
        URL_STARTS.iter().any(|start| {
            bytes
                .get(index..index + start.len())
                .is_some_and(|found| found.eq_ignore_ascii_case(start.as_bytes()))
        })
    })
}

/// One URL found in a text, redacted; one that does not parse is cut by hand.
fn redact_embedded(url: &str) -> String {
    if let Ok(parsed) = reqwest::Url::parse(url) {
        return redact_parsed(&parsed);
    }
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let before_query = rest.find(['?', '#']).map_or(rest, |end| &rest[..end]);
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    // User information ends at the last `@` of the authority.
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let mut shown = format!("{}://{host}{path}", scheme.to_ascii_lowercase());
    if rest.len() > before_query.len() && rest[before_query.len()..].starts_with('?') {
        shown.push_str(REDACTED_QUERY);
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scheme, host, port and path are kept; query, fragment and credentials never are.
    #[test]
    fn urls_keep_only_what_is_safe() {
        let cases = [
            (
                "https://bucket.example/k/o?X-Amz-Signature=SECRET&X-Amz-Credential=AKIA",
                "https://bucket.example/k/o?<redacted>",
            ),
            ("http://u:SECRET@h:8080/p#SECRET", "http://h:8080/p"),
            ("http://h/p?", "http://h/p?<redacted>"),
            (
                "http://[::1]:9/p?token=SECRET",
                "http://[::1]:9/p?<redacted>",
            ),
            ("HTTP://H:80/p", "http://h/p"),
            ("not a url?token=SECRET", "<unparsable URL>"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }

    /// Every URL in a text is redacted, parsable or not, in any case, with the text around
    /// it kept; a URL redacted before stays as it was.
    #[test]
    fn texts_lose_every_query() {
        let cases = [
            (
                "error sending request for url (http://127.0.0.1:1/x?token=SECRET): refused",
                "error sending request for url (http://127.0.0.1:1/x?<redacted>): refused",
            ),
            (
                "from HTTPS://a/b?sig=SECRET to http://c:99999/d?sig=SECRET.",
                "from https://a/b?<redacted> to http://c:99999/d?<redacted>.",
            ),
            (
                "quoted \"http://u:SECRET@h/p?q=SECRET\" end",
                "quoted \"http://h/p?<redacted>\" end",
            ),
            ("http://h/p?a=SECRET)b", "http://h/p?<redacted>"),
            ("no url here", "no url here"),
            (
                "the 302 from http://h/r?<redacted> goes on",
                "the 302 from http://h/r?<redacted> goes on",
            ),
            ("http://", "http://"),
        ];
        for (text, expected) in cases {
            let shown = redact_urls_in(text);
            assert_eq!(shown, expected, "{text}");
            assert!(!shown.contains("SECRET"), "{shown}");
        }
    }
}
