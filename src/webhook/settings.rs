//! `[webhooks.NAME]`: the settings of one vendor's webhook, beside the code that
//! loads and verifies it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::toml_values::duration;

/// `[webhooks.NAME]`: one vendor's webhook URL, how its requests are verified, and the
/// stream (or streams) its events go to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The stream every event goes to, unless `[webhooks.NAME.route]` chooses per event.
    pub stream: Option<String>,
    /// How a request proves who sent it.
    pub verify: VerifyScheme,
    /// Environment variable holding the secret; several comma-separated during rotation.
    pub secret_env: Option<String>,
    /// File holding the secret; several one per line during rotation.
    pub secret_file: Option<PathBuf>,
    /// Schemes with a timestamp: a request signed longer ago, or further in the future,
    /// is refused.
    #[serde(default = "default_webhook_tolerance", deserialize_with = "duration")]
    pub tolerance: Duration,
    /// Request header holding a delivery id, when the scheme has none of its own.
    pub id_header: Option<String>,
    /// `token`: the header carrying the token as is (default: `Authorization: Bearer`).
    pub token_header: Option<String>,
    /// `hmac`: the header carrying the signature.
    pub signature_header: Option<String>,
    /// `hmac`: the hash.
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
    /// `hmac`: how the signature is written in the header.
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// `hmac`: text before the signature in the header (e.g. `sha256=`).
    pub prefix: Option<String>,
    /// `twilio`: the URL as Twilio calls it (scheme, host, path), which Twilio signs.
    pub public_url: Option<String>,
    /// Chooses the stream of each event.
    pub route: Option<WebhookRoute>,
    /// Request headers copied into each event before validation: header name = property.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `verify = …`: the verification schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyScheme {
    None,
    Token,
    Basic,
    Hmac,
    StandardWebhooks,
    Stripe,
    Github,
    Shopify,
    Slack,
    Twilio,
    Mailgun,
}

impl VerifyScheme {
    /// The name written in `verify = …`.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyScheme::None => "none",
            VerifyScheme::Token => "token",
            VerifyScheme::Basic => "basic",
            VerifyScheme::Hmac => "hmac",
            VerifyScheme::StandardWebhooks => "standard-webhooks",
            VerifyScheme::Stripe => "stripe",
            VerifyScheme::Github => "github",
            VerifyScheme::Shopify => "shopify",
            VerifyScheme::Slack => "slack",
            VerifyScheme::Twilio => "twilio",
            VerifyScheme::Mailgun => "mailgun",
        }
    }

    /// Whether the scheme needs `secret_env` or `secret_file`.
    pub fn needs_secret(self) -> bool {
        self != VerifyScheme::None
    }
}

/// `algorithm = …` of the generic `hmac` scheme.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    Sha1,
    #[default]
    Sha256,
    Sha512,
}

/// `encoding = …` of the generic `hmac` scheme.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

/// `[webhooks.NAME.route]`: the stream of each event, from a JSON pointer into the event
/// or from a request header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRoute {
    pub pointer: Option<String>,
    pub header: Option<String>,
    /// Value = stream; `"*"` is the fallback.
    pub streams: BTreeMap<String, String>,
}

impl WebhookConfig {
    /// The checks that need no schema: one way to choose the stream, what each scheme
    /// needs to be configured.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.stream, &self.route) {
            (Some(_), Some(_)) => {
                return Err("set either stream or [route], not both".into());
            }
            (None, None) => {
                return Err(
                    "set stream = \"NAME\" or a [route] section choosing the stream per event"
                        .into(),
                )
            }
            (None, Some(route)) => match (&route.pointer, &route.header) {
                (Some(p), None) if p.is_empty() || p.starts_with('/') => {}
                (Some(p), None) => {
                    return Err(format!(
                        "route.pointer = {p:?} is not a JSON pointer; write it like \"/type\""
                    ))
                }
                (None, Some(_)) => {}
                _ => return Err("[route] needs exactly one of pointer or header".into()),
            },
            (Some(_), None) => {}
        }
        if self.verify.needs_secret() && self.secret_env.is_none() && self.secret_file.is_none() {
            return Err("this verify scheme needs a secret: set secret_env or secret_file".into());
        }
        if self.secret_env.is_some() && self.secret_file.is_some() {
            return Err("set secret_env or secret_file, not both".into());
        }
        if self.verify == VerifyScheme::Hmac && self.signature_header.is_none() {
            return Err(
                "verify = \"hmac\" needs signature_header, the header carrying the signature"
                    .into(),
            );
        }
        if self.verify == VerifyScheme::Twilio && self.public_url.is_none() {
            return Err("verify = \"twilio\" needs public_url, the URL Twilio calls (it is part of what Twilio signs)".into());
        }
        if self.tolerance.is_zero() {
            return Err(
                "tolerance = 0 would refuse every request; give a duration such as \"5m\"".into(),
            );
        }
        Ok(())
    }
}

fn default_webhook_tolerance() -> Duration {
    Duration::from_secs(300)
}
