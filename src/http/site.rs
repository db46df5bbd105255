//! Which sites may call the events and admin endpoints from a browser: the `Host` a
//! request names (DNS rebinding: a page of `evil.example` that resolves to 127.0.0.1
//! would otherwise read `/v1/dead-letters`) and the `Origin` a browser sends with a
//! cross-site request (a page could otherwise POST a JSON body as a form, which needs
//! no preflight, and plant events). Webhooks are signed and not browser-facing; probes
//! (`/healthz`, `/readyz`) answer any host.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::HttpConfig;
use super::{ApiError, AppState};

/// The hosts and origins allowed (see [`HttpConfig::allowed_hosts`]).
#[derive(Debug, Clone)]
pub struct SiteGuard {
    /// Host names (lowercase, without port) the endpoints answer to; `None`: any.
    hosts: Option<Vec<String>>,
    /// Origins (`scheme://host[:port]`, lowercase) allowed besides the page's own.
    origins: Vec<String>,
}

/// `host` without its port (`[::1]:8080` → `::1`), lowercase.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.to_ascii_lowercase()
}

impl SiteGuard {
    /// From `[http] allowed_hosts` and `allowed_origins`; by default, a listener bound
    /// to loopback (`listens`: the HTTP and admin addresses) answers only loopback names.
    pub fn new(http: &HttpConfig, listens: &[&str]) -> SiteGuard {
        let hosts = if http.allowed_hosts.iter().any(|h| h == "*") {
            None
        } else if !http.allowed_hosts.is_empty() {
            Some(http.allowed_hosts.iter().map(|h| host_name(h)).collect())
        } else if listens
            .iter()
            .filter(|l| !l.is_empty())
            .all(|l| crate::auth::is_loopback(l))
        {
            let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            names.extend(listens.iter().map(|l| host_name(l)));
            Some(names)
        } else {
            None
        };
        SiteGuard {
            hosts,
            origins: http
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Why a request with these `Host` and `Origin` headers is refused, if it is.
    pub fn refusal(&self, host: Option<&str>, origin: Option<&str>) -> Option<String> {
        if let (Some(allowed), Some(host)) = (&self.hosts, host) {
            let name = host_name(host);
            if !allowed.contains(&name) {
                return Some(format!(
                    "this Sluice does not answer to the host {name:?}: a page of another site that resolves to it is refused (DNS rebinding); if it is a name of yours, add it to [http] allowed_hosts"
                ));
            }
        }
        let origin = origin?.trim().trim_end_matches('/').to_ascii_lowercase();
        // The page's own origin: the same host and port as the request.
        let own = host.is_some_and(|h| {
            origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(h.trim()))
        });
        if own || self.origins.contains(&origin) {
            return None;
        }
        Some(format!(
            "a page of {origin} may not call this endpoint from a browser; if it should, add it to [http] allowed_origins"
        ))
    }
}

/// Refuses (403) a request whose `Host` or `Origin` is not allowed.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let refusal = {
        let text = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        state.site.refusal(text(header::HOST), text(header::ORIGIN))
    };
    if let Some(why) = refusal {
        return ApiError::Forbidden(why).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(hosts: &[&str], origins: &[&str], listen: &str) -> SiteGuard {
        let http = HttpConfig {
            allowed_hosts: hosts.iter().map(|s| (*s).to_owned()).collect(),
            allowed_origins: origins.iter().map(|s| (*s).to_owned()).collect(),
            ..HttpConfig::default()
        };
        SiteGuard::new(&http, &[listen])
    }

    #[test]
    fn loopback_listeners_answer_loopback_names_only_by_default() {
        let g = guard(&[], &[], "127.0.0.1:8080");
        assert_eq!(g.refusal(Some("127.0.0.1:8080"), None), None);
        assert_eq!(g.refusal(Some("localhost:8080"), None), None);
        assert_eq!(g.refusal(Some("[::1]:8080"), None), None);
        assert!(g.refusal(Some("evil.example:8080"), None).is_some());
        let any = guard(&[], &[], "0.0.0.0:8080");
        assert_eq!(any.refusal(Some("sluice.internal:8080"), None), None);
        let named = guard(&["sluice.internal"], &[], "0.0.0.0:8080");
        assert!(named.refusal(Some("evil.example"), None).is_some());
        assert_eq!(
            guard(&["*"], &[], "127.0.0.1:1").refusal(Some("x"), None),
            None
        );
    }

    #[test]
    fn only_the_pages_own_origin_or_an_allowed_one_passes() {
        let g = guard(&[], &["https://panel.example"], "127.0.0.1:8080");
        assert_eq!(
            g.refusal(Some("127.0.0.1:8080"), Some("http://127.0.0.1:8080")),
            None
        );
        assert!(g
            .refusal(Some("127.0.0.1:8080"), Some("https://evil.example"))
            .is_some());
        assert!(g.refusal(Some("127.0.0.1:8080"), Some("null")).is_some());
        assert_eq!(
            g.refusal(Some("127.0.0.1:8080"), Some("https://panel.example/")),
            None
        );
    }
}
