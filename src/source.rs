//! Where an event came from: the `source` text its rows' sources and its dead letters
//! carry (`http 1.2.3.4:5678`, `tcp 10.0.0.7:51234 CN=web-1`, `webhook stripe 1.2.3.4:9`,
//! `jetstream events.order_placed`, `replay`). The one place that writes that text and
//! reads it back ([`Kind::of`]), so that no caller tests string prefixes of its own.

use std::net::SocketAddr;
use std::sync::Arc;

/// What kind of input an event came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Webhook,
    Tcp,
    JetStream,
    Replay,
    /// A pulled source (`[sources.NAME]`).
    Pull,
}

impl Kind {
    /// The kind of input a `source` text names; `None` for a text no input writes.
    pub fn of(source: &str) -> Option<Kind> {
        let first = source.split(' ').next().unwrap_or_default();
        Some(match first {
            "http" => Kind::Http,
            "webhook" => Kind::Webhook,
            "tcp" => Kind::Tcp,
            "jetstream" => Kind::JetStream,
            "replay" => Kind::Replay,
            "pull" => Kind::Pull,
            _ => return None,
        })
    }

    /// The label of the `source` metric label and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Webhook => "webhook",
            Kind::Tcp => "tcp",
            Kind::JetStream => "jetstream",
            Kind::Replay => "replay",
            Kind::Pull => "pull",
        }
    }

    /// Whether events of this kind were routed by a field of their own (TCP lines,
    /// JetStream messages without a subject prefix), which is removed before validation
    /// unless the schema declares it.
    pub fn routes_by_field(self) -> bool {
        matches!(self, Kind::Tcp | Kind::JetStream)
    }
}

/// A pulled source's rows.
pub fn pull(source: &str) -> Arc<str> {
    format!("pull {source}").into()
}

/// An HTTP request's source, with the ingest token's name when it had one.
pub fn http(peer: SocketAddr, token: Option<&str>) -> Arc<str> {
    match token {
        Some(name) => format!("http {peer} token={name}").into(),
        None => format!("http {peer}").into(),
    }
}

/// A webhook request's source.
pub fn webhook(name: &str, peer: SocketAddr) -> Arc<str> {
    format!("webhook {name} {peer}").into()
}

/// A TCP connection's source, with its client certificate's subject when it had one.
pub fn tcp(peer: SocketAddr, subject: Option<&str>) -> Arc<str> {
    match subject {
        Some(subject) => format!("tcp {peer} {subject}").into(),
        None => format!("tcp {peer}").into(),
    }
}

/// A JetStream message's source.
pub fn jetstream(subject: &str) -> Arc<str> {
    format!("jetstream {subject}").into()
}

/// The source of rows written by a replay.
pub fn replay() -> Arc<str> {
    "replay".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_reads_back_as_its_kind() {
        let peer: SocketAddr = "1.2.3.4:5678".parse().unwrap();
        for (text, kind) in [
            (http(peer, None), Kind::Http),
            (http(peer, Some("shop")), Kind::Http),
            (webhook("stripe", peer), Kind::Webhook),
            (tcp(peer, None), Kind::Tcp),
            (tcp(peer, Some("CN=web-1,O=Ops")), Kind::Tcp),
            (jetstream("events.order_placed"), Kind::JetStream),
            (replay(), Kind::Replay),
        ] {
            assert_eq!(Kind::of(&text), Some(kind), "{text}");
        }
        assert_eq!(Kind::of("tcpx 1.2.3.4:5"), None);
        assert_eq!(Kind::of(""), None);
        assert!(Kind::Tcp.routes_by_field() && !Kind::Webhook.routes_by_field());
    }
}
