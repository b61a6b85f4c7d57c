//! Which web pages may use the server: the `Origin` check and CORS.
//!
//! A browser attaches any site's cookies and network position to the
//! requests and WebSockets that site's scripts open, so a page from a
//! foreign origin must not be able to drive the API on a visitor's behalf.
//! Every request whose `Origin` is neither the server's own nor listed in
//! `COLLAB_ALLOWED_ORIGINS` is refused with 403 `forbidden` before routing,
//! the WebSocket upgrade included (browsers do not apply CORS to
//! WebSockets, so the server is the only one who can say no). Requests
//! without `Origin` come from non-browser clients and are let through.
//!
//! CORS headers go to listed origins only: the server's own pages need
//! none, and an unlisted origin never gets this far.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::AppError;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);
/// Most characters of a refused origin quoted back in the error message.
const MAX_QUOTED: usize = 200;

/// The origins besides the server's own that may use it, parsed once.
#[derive(Debug, Clone)]
pub struct AllowedOrigins(Arc<[WebOrigin]>);

impl AllowedOrigins {
    /// Parses the configured entries; one that is not `scheme://host[:port]`
    /// could never match a browser's `Origin`, so it is reported and skipped.
    pub fn new(entries: &[String]) -> Self {
        let parsed = entries
            .iter()
            .filter_map(|entry| {
                let origin = WebOrigin::parse(entry);
                if origin.is_none() {
                    tracing::warn!(
                        entry = %entry,
                        "ignoring a COLLAB_ALLOWED_ORIGINS entry that is not scheme://host[:port]"
                    );
                }
                origin
            })
            .collect();
        Self(parsed)
    }

    fn contains(&self, origin: &WebOrigin) -> bool {
        self.0.iter().any(|allowed| allowed.same_as(origin))
    }

    /// Whether this `Origin` header value names a listed origin.
    fn lists(&self, value: &HeaderValue) -> bool {
        value
            .to_str()
            .ok()
            .and_then(WebOrigin::parse)
            .is_some_and(|origin| self.contains(&origin))
    }
}

/// CORS for the listed origins: they may call every method of the API with
/// a JSON body and a bearer token.
pub fn cors(allowed: AllowedOrigins) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |value, _| allowed.lists(value)))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([CONTENT_TYPE, AUTHORIZATION])
        .max_age(PREFLIGHT_MAX_AGE)
}

/// Middleware: refuses a request from a foreign, unlisted origin.
pub async fn check(
    State(allowed): State<AllowedOrigins>,
    request: Request,
    next: Next,
) -> Response {
    let mut origins = request.headers().get_all(ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return next.run(request).await;
    };
    // Browsers send one; two is someone trying to confuse whoever reads it.
    let verdict = if origins.next().is_some() {
        Err(AppError::Forbidden(
            "a request may carry only one Origin header".to_owned(),
        ))
    } else {
        judge(origin, own_authority(&request), &allowed)
    };
    match verdict {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// Where the client thinks it is talking to: `Host`, or the authority of an
/// absolute-form request target.
fn own_authority(request: &Request) -> Option<&str> {
    match request.headers().get(HOST) {
        Some(host) => host.to_str().ok(),
        None => request.uri().authority().map(|a| a.as_str()),
    }
}

fn judge(
    origin: &HeaderValue,
    host: Option<&str>,
    allowed: &AllowedOrigins,
) -> Result<(), AppError> {
    let text = origin.to_str().unwrap_or("");
    if text.eq_ignore_ascii_case("null") {
        // An opaque origin (sandboxed frame, file://, some redirects) cannot
        // be told apart from any other, so no entry can vouch for it.
        return Err(AppError::Forbidden(
            "requests from an opaque origin (Origin: null) are not allowed".to_owned(),
        ));
    }
    if let Some(parsed) = WebOrigin::parse(text) {
        let own = host.is_some_and(|host| parsed.is_served_at(host));
        if own || allowed.contains(&parsed) {
            return Ok(());
        }
    }
    Err(AppError::Forbidden(format!(
        "requests from origin {} are not allowed; list it in COLLAB_ALLOWED_ORIGINS",
        quote(origin)
    )))
}

/// The refused origin as the message shows it: bounded and printable.
fn quote(origin: &HeaderValue) -> String {
    let lossy = String::from_utf8_lossy(origin.as_bytes());
    let mut quoted: String = lossy.chars().take(MAX_QUOTED).collect();
    if lossy.chars().count() > MAX_QUOTED {
        quoted.push('…');
    }
    quoted
}

/// A web origin, `scheme://host[:port]`, compared the way browsers mean it:
/// case-insensitively, and with the scheme's default port implied.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WebOrigin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl WebOrigin {
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text.strip_suffix('/').unwrap_or(text);
        let (scheme, authority) = text.split_once("://")?;
        let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid_scheme {
            return None;
        }
        let (host, port) = split_authority(authority)?;
        Some(Self {
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn default_port(&self) -> Option<u16> {
        match self.scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        }
    }

    fn effective_port(&self) -> Option<u16> {
        self.port.or_else(|| self.default_port())
    }

    fn same_as(&self, other: &WebOrigin) -> bool {
        self.scheme == other.scheme
            && self.host == other.host
            && self.effective_port() == other.effective_port()
    }

    /// Whether a page of this origin is talking to the server it came from,
    /// which the request's `Host` names. `Host` carries no scheme: the
    /// origin's own decides which port an omitted one means.
    fn is_served_at(&self, host_header: &str) -> bool {
        let Some((host, port)) = split_authority(host_header.trim()) else {
            return false;
        };
        host.eq_ignore_ascii_case(&self.host)
            && port.or_else(|| self.default_port()) == self.effective_port()
    }
}

/// `host[:port]`, the host possibly a bracketed IPv6 address. `None` for
/// anything else: user info, a path, a bad port, stray characters.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => {
            !ipv6.is_empty()
                && ipv6
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '%'))
        }
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        }
    };
    if !host_ok {
        return None;
    }
    let port = match port {
        // `host:` is allowed by RFC 3986 and means the default port.
        None | Some("") => None,
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => Some(digits.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entries: &[&str]) -> AllowedOrigins {
        AllowedOrigins::new(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
    }

    fn verdict(origin: &str, host: Option<&str>, entries: &[&str]) -> Result<(), String> {
        judge(
            &HeaderValue::from_str(origin).unwrap(),
            host,
            &allowed(entries),
        )
        .map_err(|e| {
            assert_eq!(e.code(), "forbidden");
            e.to_string()
        })
    }

    #[test]
    fn the_servers_own_origin_is_allowed() {
        assert!(verdict("http://127.0.0.1:8000", Some("127.0.0.1:8000"), &[]).is_ok());
        assert!(verdict("HTTP://Example.COM", Some("example.com"), &[]).is_ok());
        assert!(verdict("http://example.com", Some("example.com:80"), &[]).is_ok());
        assert!(verdict("https://example.com:443", Some("example.com"), &[]).is_ok());
        assert!(verdict("http://[::1]:8000", Some("[::1]:8000"), &[]).is_ok());
        // TLS ends at a proxy: the page is https, the Host is the same name.
        assert!(verdict("https://example.com", Some("example.com"), &[]).is_ok());
    }

    #[test]
    fn another_host_or_port_is_foreign() {
        let err = verdict("http://evil.test", Some("example.com"), &[]).unwrap_err();
        assert!(err.contains("http://evil.test"), "{err}");
        assert!(err.contains("COLLAB_ALLOWED_ORIGINS"), "{err}");
        assert!(verdict("http://example.com:8080", Some("example.com"), &[]).is_err());
        assert!(verdict("http://example.com", Some("example.com:8080"), &[]).is_err());
        assert!(verdict("https://example.com", Some("example.com:80"), &[]).is_err());
        assert!(verdict("http://example.com.evil.test", Some("example.com"), &[]).is_err());
        assert!(verdict("http://example.com", None, &[]).is_err());
    }

    #[test]
    fn listed_origins_match_case_insensitively_and_ignore_a_trailing_slash() {
        let list = ["https://App.Example.com/", "http://localhost:5173"];
        assert!(verdict("https://app.example.com", Some("api.test"), &list).is_ok());
        assert!(verdict("https://APP.example.com/", Some("api.test"), &list).is_ok());
        assert!(verdict("https://app.example.com:443", Some("api.test"), &list).is_ok());
        assert!(verdict("http://localhost:5173", Some("api.test"), &list).is_ok());
        assert!(verdict("http://app.example.com", Some("api.test"), &list).is_err());
        assert!(verdict("http://localhost:5174", Some("api.test"), &list).is_err());
        assert!(verdict("http://localhost", Some("api.test"), &list).is_err());
    }

    #[test]
    fn null_and_malformed_origins_are_refused() {
        assert!(verdict("null", Some("null"), &["null"]).is_err());
        for bad in [
            "",
            "example.com",
            "http://",
            "http://user@example.com",
            "http://example.com/path",
            "http://example.com:99999",
            "http://example.com:8o",
            "http://ex ample.com",
            "://example.com",
        ] {
            assert!(
                verdict(bad, Some("example.com"), &[bad]).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn long_origins_are_quoted_briefly() {
        let origin = format!("http://{}.test", "a".repeat(5000));
        let err = verdict(&origin, Some("example.com"), &[]).unwrap_err();
        assert!(err.len() < 400, "{err}");
    }

    #[test]
    fn malformed_entries_are_skipped() {
        let list = allowed(&["example.com", "", "https://ok.test"]);
        assert_eq!(list.0.len(), 1);
    }
}
