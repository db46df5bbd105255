//! Checks that a webhook request comes from who it claims, each scheme as its vendor
//! documents it, on the body exactly as it arrived.
//!
//! In: the request's headers, body (after `Content-Encoding` is undone), query and, for
//! the schemes that sign form fields (Twilio, legacy Mailgun), its fields; the secrets.
//! Out: the delivery id the scheme carries, or why the request is refused. Every
//! comparison of a secret or a signature is constant-time (`subtle`, or `hmac`'s own
//! `verify_slice`), and a refusal never names the secret or the expected value.

use axum::http::HeaderMap;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Digest as _;
use subtle::ConstantTimeEq;

use super::{HmacAlgorithm, SignatureEncoding, VerifyScheme, WebhookConfig};

/// Why a request was refused; also the `reason` label of
/// `sluice_webhook_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    MissingSignature,
    BadSignature,
    StaleTimestamp,
    MissingCredentials,
    BadCredentials,
    /// A signature already seen (within the tolerance) over another body: a captured
    /// signature reused to forge an event (Mailgun signs a token, not the body).
    ReplayedSignature,
}

impl Refusal {
    /// Every refusal, for the series registered at start-up.
    pub const ALL: [Refusal; 6] = [
        Refusal::MissingSignature,
        Refusal::BadSignature,
        Refusal::StaleTimestamp,
        Refusal::MissingCredentials,
        Refusal::BadCredentials,
        Refusal::ReplayedSignature,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MissingSignature => "missing signature",
            Refusal::BadSignature => "bad signature",
            Refusal::StaleTimestamp => "timestamp outside tolerance",
            Refusal::MissingCredentials => "missing credentials",
            Refusal::BadCredentials => "bad credentials",
            Refusal::ReplayedSignature => "signature reused with another body",
        }
    }
}

/// The secrets of one webhook (several during a rotation), as the scheme uses them as
/// keys. Never printed.
#[derive(Clone)]
pub struct Secrets(Vec<Vec<u8>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

impl Secrets {
    /// The keys for `scheme` from the secrets as configured: Standard Webhooks secrets
    /// are base64 after an optional `whsec_`; every other scheme uses the text as is.
    pub fn new(scheme: VerifyScheme, texts: Vec<String>) -> Result<Secrets, String> {
        let keys = texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| match scheme {
                VerifyScheme::StandardWebhooks => {
                    let b64 = text.strip_prefix("whsec_").unwrap_or(&text);
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|_| format!("secret #{} is not a Standard Webhooks secret (whsec_ followed by base64)", i + 1))
                }
                _ => Ok(text.into_bytes()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Secrets(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a signature covers besides headers.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    /// The body as the vendor signed it.
    pub body: &'a [u8],
    /// The query string of the request, without `?`.
    pub query: Option<&'a str>,
    /// The form fields, in order, when the body is a form (Twilio and legacy Mailgun
    /// sign fields rather than bytes).
    pub fields: Option<&'a [(String, String)]>,
    /// Seconds since the Unix epoch.
    pub now: i64,
}

/// What a verified request tells about its delivery.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// The vendor's id of this delivery, the same when it retries.
    pub delivery_id: Option<String>,
    /// A property of the event that is its delivery id (Stripe's event `id`).
    pub delivery_property: Option<&'static str>,
}

/// Checks `req` under `hook`'s scheme with `secrets`.
pub fn verify(hook: &WebhookConfig, secrets: &Secrets, req: &Request) -> Result<Verified, Refusal> {
    let tolerance = i128::from(hook.tolerance.as_secs());
    // In i128: a timestamp near i64::MIN must not wrap around into the window.
    let fresh = |t: i64| {
        if (i128::from(req.now) - i128::from(t)).abs() <= tolerance {
            Ok(())
        } else {
            Err(Refusal::StaleTimestamp)
        }
    };
    let header_id = |name: &str| header(req.headers, name).map(str::to_owned);
    let mut verified = Verified::default();
    match hook.verify {
        VerifyScheme::None => {}
        VerifyScheme::Token => {
            let presented = match &hook.token_header {
                Some(name) => header(req.headers, name),
                None => header(req.headers, "authorization")
                    .and_then(|v| strip_prefix_ignore_case(v, "bearer "))
                    .map(str::trim),
            }
            .ok_or(Refusal::MissingCredentials)?;
            equal_secret(secrets, presented.as_bytes())?;
        }
        VerifyScheme::Basic => {
            let encoded = header(req.headers, "authorization")
                .and_then(|v| strip_prefix_ignore_case(v, "basic "))
                .ok_or(Refusal::MissingCredentials)?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| Refusal::BadCredentials)?;
            equal_secret(secrets, &decoded)?;
        }
        VerifyScheme::Hmac => {
            let name = hook.signature_header.as_deref().unwrap_or_default();
            let value = header(req.headers, name).ok_or(Refusal::MissingSignature)?;
            let value = match &hook.prefix {
                Some(prefix) => value
                    .strip_prefix(prefix.as_str())
                    .ok_or(Refusal::BadSignature)?,
                None => value,
            };
            let sig = match hook.encoding {
                SignatureEncoding::Hex => hex::decode(value.trim()).ok(),
                SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD
                    .decode(value.trim())
                    .ok(),
            }
            .ok_or(Refusal::BadSignature)?;
            let algo = match hook.algorithm {
                HmacAlgorithm::Sha1 => Algo::Sha1,
                HmacAlgorithm::Sha256 => Algo::Sha256,
                HmacAlgorithm::Sha512 => Algo::Sha512,
            };
            signed_by(secrets, algo, &[req.body], &[sig])?;
        }
        VerifyScheme::StandardWebhooks => {
            // Svix sends the same headers with `svix-` instead of `webhook-`.
            let get = |n: &str| {
                header(req.headers, &format!("webhook-{n}"))
                    .or_else(|| header(req.headers, &format!("svix-{n}")))
            };
            let (Some(id), Some(ts), Some(sigs)) = (get("id"), get("timestamp"), get("signature"))
            else {
                return Err(Refusal::MissingSignature);
            };
            let t: i64 = ts.trim().parse().map_err(|_| Refusal::BadSignature)?;
            // `v1,<base64>` entries separated by spaces; other versions are ignored.
            let candidates: Vec<Vec<u8>> = sigs
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .filter_map(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .collect();
            signed_by(
                secrets,
                Algo::Sha256,
                &[id.as_bytes(), b".", ts.trim().as_bytes(), b".", req.body],
                &candidates,
            )?;
            fresh(t)?;
            verified.delivery_id = Some(id.to_owned());
        }
        VerifyScheme::Stripe => {
            let value = header(req.headers, "stripe-signature").ok_or(Refusal::MissingSignature)?;
            let mut t = None;
            let mut candidates = Vec::new();
            for part in value.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", v)) => t = Some(v),
                    Some(("v1", v)) => candidates.extend(hex::decode(v).ok()),
                    _ => {}
                }
            }
            let ts = t.ok_or(Refusal::BadSignature)?;
            let t: i64 = ts.parse().map_err(|_| Refusal::BadSignature)?;
            signed_by(
                secrets,
                Algo::Sha256,
                &[ts.as_bytes(), b".", req.body],
                &candidates,
            )?;
            fresh(t)?;
            verified.delivery_property = Some("id");
        }
        VerifyScheme::Github => {
            let value =
                header(req.headers, "x-hub-signature-256").ok_or(Refusal::MissingSignature)?;
            let sig = value
                .strip_prefix("sha256=")
                .and_then(|h| hex::decode(h).ok())
                .ok_or(Refusal::BadSignature)?;
            signed_by(secrets, Algo::Sha256, &[req.body], &[sig])?;
            verified.delivery_id = header_id("x-github-delivery");
        }
        VerifyScheme::Shopify => {
            let value =
                header(req.headers, "x-shopify-hmac-sha256").ok_or(Refusal::MissingSignature)?;
            let sig = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|_| Refusal::BadSignature)?;
            signed_by(secrets, Algo::Sha256, &[req.body], &[sig])?;
            verified.delivery_id = header_id("x-shopify-webhook-id");
        }
        VerifyScheme::Slack => {
            let (Some(value), Some(ts)) = (
                header(req.headers, "x-slack-signature"),
                header(req.headers, "x-slack-request-timestamp"),
            ) else {
                return Err(Refusal::MissingSignature);
            };
            let sig = value
                .strip_prefix("v0=")
                .and_then(|h| hex::decode(h).ok())
                .ok_or(Refusal::BadSignature)?;
            let t: i64 = ts.trim().parse().map_err(|_| Refusal::BadSignature)?;
            signed_by(
                secrets,
                Algo::Sha256,
                &[b"v0:", ts.as_bytes(), b":", req.body],
                &[sig],
            )?;
            fresh(t)?;
        }
        VerifyScheme::Twilio => twilio(hook, secrets, req)?,
        VerifyScheme::Mailgun => {
            let (t, token, sig) = mailgun_signature(req).ok_or(Refusal::MissingSignature)?;
            let sig = hex::decode(sig).map_err(|_| Refusal::BadSignature)?;
            let t_num: i64 = t.parse().map_err(|_| Refusal::BadSignature)?;
            signed_by(
                secrets,
                Algo::Sha256,
                &[t.as_bytes(), token.as_bytes()],
                &[sig],
            )?;
            fresh(t_num)?;
            // The token is unique per delivery: it is the delivery id, and a token seen
            // before over another body is refused by the webhook (see `Webhook::verify`).
            verified.delivery_id = Some(token);
        }
    }
    if let Some(name) = &hook.id_header {
        if let Some(id) = header_id(name) {
            verified.delivery_id = Some(id);
            verified.delivery_property = None;
        }
    }
    Ok(verified)
}

/// Twilio: `X-Twilio-Signature` is the base64 HMAC (SHA-1, or SHA-256 when
/// `X-Twilio-Webhooks-Signature-Settings` says `algorithm=HMAC_SHA256`) of the URL Twilio
/// called followed by each form field's name and value, sorted. A JSON body is covered
/// instead by the `bodySHA256` query parameter, which is part of the signed URL. Like
/// Twilio's own validator, the URL is tried with and without its default port.
fn twilio(hook: &WebhookConfig, secrets: &Secrets, req: &Request) -> Result<(), Refusal> {
    let value = header(req.headers, "x-twilio-signature").ok_or(Refusal::MissingSignature)?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| Refusal::BadSignature)?;
    let algo = match header(req.headers, "x-twilio-webhooks-signature-settings") {
        Some(settings)
            if settings.split(',').any(|p| {
                p.split_once('=')
                    .is_some_and(|(k, v)| k.trim() == "algorithm" && v.trim() == "HMAC_SHA256")
            }) =>
        {
            Algo::Sha256
        }
        _ => Algo::Sha1,
    };
    let base = hook.public_url.as_deref().unwrap_or_default();
    let url = match req.query {
        Some(q) if !q.is_empty() && !base.contains('?') => format!("{base}?{q}"),
        _ => base.to_owned(),
    };
    let mut signed = String::new();
    match req.fields {
        Some(fields) => {
            let mut pairs: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            pairs.sort_unstable();
            pairs.dedup();
            for (k, v) in pairs {
                signed.push_str(k);
                signed.push_str(v);
            }
        }
        None => {
            let expected = form_urlencoded::parse(req.query.unwrap_or_default().as_bytes())
                .find(|(k, _)| k == "bodySHA256")
                .map(|(_, v)| v.into_owned())
                .ok_or(Refusal::BadSignature)?;
            let actual = hex::encode(sha2::Sha256::digest(req.body));
            if !bool::from(actual.as_bytes().ct_eq(expected.as_bytes())) {
                return Err(Refusal::BadSignature);
            }
        }
    }
    let urls = [url.clone(), toggle_default_port(&url)];
    for u in &urls {
        if signed_by(
            secrets,
            algo,
            &[u.as_bytes(), signed.as_bytes()],
            std::slice::from_ref(&sig),
        )
        .is_ok()
        {
            return Ok(());
        }
    }
    Err(Refusal::BadSignature)
}

/// `url` with its default port added (`https://h/p` → `https://h:443/p`), or removed if
/// it has one.
fn toggle_default_port(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (host, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let default = if scheme.eq_ignore_ascii_case("https") {
        "443"
    } else {
        "80"
    };
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
            format!("{scheme}://{h}{path}")
        }
        _ => format!("{scheme}://{host}:{default}{path}"),
    }
}

/// Mailgun's `timestamp`, `token` and `signature`: the `signature` object of a JSON
/// body, or top-level fields of a form (legacy webhooks).
fn mailgun_signature(req: &Request) -> Option<(String, String, String)> {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match req.fields {
        Some(fields) => {
            let get = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            Some((get("timestamp")?, get("token")?, get("signature")?))
        }
        None => {
            #[derive(serde::Deserialize)]
            struct Body {
                signature: serde_json::Map<String, serde_json::Value>,
            }
            let body: Body = serde_json::from_slice(req.body).ok()?;
            let get = |name: &str| body.signature.get(name).and_then(text);
            Some((get("timestamp")?, get("token")?, get("signature")?))
        }
    }
}

/// The value of header `name`, if present and text.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

/// Whether `presented` is one of the secrets. Digests are compared, so neither the
/// content nor the length of a secret shows in the time taken.
fn equal_secret(secrets: &Secrets, presented: &[u8]) -> Result<(), Refusal> {
    let presented = sha2::Sha256::digest(presented);
    let mut any = subtle::Choice::from(0);
    for secret in &secrets.0 {
        any |= sha2::Sha256::digest(secret).ct_eq(&presented);
    }
    if bool::from(any) {
        Ok(())
    } else {
        Err(Refusal::BadCredentials)
    }
}

#[derive(Clone, Copy)]
enum Algo {
    Sha1,
    Sha256,
    Sha512,
}

/// Whether one of `candidates` is the HMAC of the concatenated `parts` under one of the
/// secrets. `verify_slice` compares in constant time.
fn signed_by(
    secrets: &Secrets,
    algo: Algo,
    parts: &[&[u8]],
    candidates: &[Vec<u8>],
) -> Result<(), Refusal> {
    fn check<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]], sig: &[u8]) -> bool {
        let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
            return false;
        };
        for p in parts {
            mac.update(p);
        }
        mac.verify_slice(sig).is_ok()
    }
    if candidates.is_empty() {
        return Err(Refusal::MissingSignature);
    }
    let mut ok = false;
    for key in &secrets.0 {
        for sig in candidates {
            ok |= match algo {
                Algo::Sha1 => check::<Hmac<sha1::Sha1>>(key, parts, sig),
                Algo::Sha256 => check::<Hmac<sha2::Sha256>>(key, parts, sig),
                Algo::Sha512 => check::<Hmac<sha2::Sha512>>(key, parts, sig),
            };
        }
    }
    if ok {
        Ok(())
    } else {
        Err(Refusal::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_are_toggled_like_twilios_validator() {
        assert_eq!(
            toggle_default_port("https://example.com/v1/hooks/sms?x=1"),
            "https://example.com:443/v1/hooks/sms?x=1"
        );
        assert_eq!(
            toggle_default_port("http://example.com:80/hook"),
            "http://example.com/hook"
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = Secrets::new(VerifyScheme::Token, vec!["hunter2".into()]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
