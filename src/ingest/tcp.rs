//! The TCP line protocol (README "TCP line protocol"): one JSON object per line, the
//! `json_lines` / NDJSON that Vector, Fluent Bit and Logstash emit.
//!
//! In: sockets. Out: rows and dead letters handed to the queues. A connection-limit
//! permit is taken *before* `accept()`, so the limit is also backpressure. Each line is
//! routed by its `stream_field` (or the listener's `default_stream`); a bad line (invalid
//! UTF-8 or JSON, not an object, too long, unknown stream, schema-invalid) is
//! dead-lettered with its reason and peer address and the connection goes on. When a
//! stream's queue is full the connection waits for room and stops reading, so TCP flow
//! control slows the sender; nothing is dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::budget::{decode_estimate, Reservation};
use super::filing::{ByField, Event, Filing, Read, Route};
use super::{body::parse_object, Handing, Ingest, LimitedListener, Receipt, Until};
use crate::event::Stage;
use crate::telemetry;
use crate::toml_values::duration;

/// `[tcp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// Address the TCP line listener binds to; an empty string disables it.
    #[serde(default = "default_tcp_listen")]
    pub listen: String,
    /// Longest accepted line in bytes; longer lines are dead-lettered.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Field of each line that names its stream.
    #[serde(default = "default_stream_field")]
    pub stream_field: String,
    /// Stream for lines that carry no `stream_field`.
    #[serde(default)]
    pub default_stream: Option<String>,
    /// Most connections served at once; further clients wait in the accept backlog.
    #[serde(default = "default_max_connections_tcp")]
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (e.g. `"10m"`).
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// `[tcp.tls]`: TLS on the TCP listener (certificate, key, optional client CA).
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
}

fn default_tcp_listen() -> String {
    "127.0.0.1:9000".to_owned()
}
fn default_max_line_bytes() -> usize {
    1024 * 1024
}
fn default_max_connections_tcp() -> usize {
    1024
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_stream_field() -> String {
    "stream".to_owned()
}

/// Lines handed to the queues together, at most (they are already in the read buffer).
const MAX_CHUNK_LINES: usize = 1000;
/// Bytes of lines handed to the queues together, at most.
const MAX_CHUNK_BYTES: usize = 1024 * 1024;
/// Read buffer of a connection.
const READ_BUFFER: usize = 64 * 1024;
/// Bytes of lines one connection may have queued and not yet committed before it stops
/// reading. Without it a fast sender fills the whole stream queue, and rows then wait
/// long enough to go cold in the cache before the writer encodes them (TCP into
/// PostgreSQL ran about a fifth slower with a full 64 MiB queue; BENCHMARKS.md).
const READ_AHEAD_BYTES: usize = 4 * 1024 * 1024;

/// One line of input, as the codec found it.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, without its `\n` or `\r\n`.
    Line(Bytes),
    /// The bytes after the last newline when the peer closed the connection.
    Unterminated(Bytes),
    /// A line longer than the limit: its first `max_line_bytes` bytes. The rest, up to the
    /// next newline, is skipped.
    TooLong(Bytes),
}

impl Frame {
    fn len(&self) -> usize {
        match self {
            Frame::Line(b) | Frame::Unterminated(b) | Frame::TooLong(b) => b.len(),
        }
    }
}

/// Newline framing with a maximum length, per-line problems returned as frames rather
/// than errors so the connection goes on. The state machine of tokio-util's delimiter
/// codec, with the newline found by `memchr` a word at a time instead of a byte at a
/// time (that search was 3 % of Sluice's CPU under a TCP load).
pub struct LineCodec {
    max: usize,
    /// How far the buffer was searched without finding a newline.
    next_index: usize,
    /// Whether the rest of a line longer than `max` is being skipped.
    discarding: bool,
}

impl LineCodec {
    pub fn new(max_line_bytes: usize) -> LineCodec {
        LineCodec {
            max: max_line_bytes,
            next_index: 0,
            discarding: false,
        }
    }
}

impl Decoder for LineCodec {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, io::Error> {
        loop {
            let read_to = self.max.saturating_add(1).min(buf.len());
            let found = memchr::memchr(b'\n', &buf[self.next_index..read_to]);
            match (self.discarding, found) {
                (true, Some(offset)) => {
                    buf.advance(offset + self.next_index + 1);
                    self.discarding = false;
                    self.next_index = 0;
                }
                (true, None) => {
                    buf.advance(read_to);
                    self.next_index = 0;
                    if buf.is_empty() {
                        return Ok(None);
                    }
                }
                (false, Some(offset)) => {
                    let end = offset + self.next_index;
                    self.next_index = 0;
                    let mut line = buf.split_to(end + 1);
                    line.truncate(end);
                    return Ok(Some(Frame::Line(strip_cr(line.freeze()))));
                }
                (false, None) if buf.len() > self.max => {
                    // The prefix is returned; the rest is skipped up to the next newline.
                    self.discarding = true;
                    return Ok(Some(Frame::TooLong(Bytes::copy_from_slice(
                        &buf[..self.max.min(buf.len())],
                    ))));
                }
                (false, None) => {
                    self.next_index = read_to;
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, io::Error> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => {
                let rest = buf.split().freeze();
                self.next_index = 0;
                Ok(Some(Frame::Unterminated(strip_cr(rest))))
            }
        }
    }
}

fn strip_cr(line: Bytes) -> Bytes {
    if line.last() == Some(&b'\r') {
        line.slice(..line.len() - 1)
    } else {
        line
    }
}

/// Longest a TLS client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `stop`, each served on `tracker`; with `tls`, each is a
/// TLS connection (a client that does not complete the handshake, or presents no
/// certificate the client CA signed when one is required, is closed before a line is
/// read).
pub async fn serve(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    config: Arc<TcpConfig>,
    tls: Option<Arc<crate::tls::Tls>>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let listener = LimitedListener::new(listener, config.max_connections, "TCP");
    while let Some((socket, peer, permit)) = listener.accept(&stop).await {
        let mut connection = Connection {
            ingest: ingest.clone(),
            config: config.clone(),
            source: crate::source::tcp(peer, None),
            peer,
            line: 0,
            in_flight: Default::default(),
        };
        let stop = stop.clone();
        let tls = tls.as_ref().map(|t| t.acceptor());
        tracker.spawn(async move {
            match tls {
                None => connection.run(socket, stop).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)) => r,
                        _ = stop.cancelled() => return,
                    };
                    match handshake {
                        Ok(Ok(stream)) => {
                            // The client certificate's subject says who sent each line.
                            if let Some(subject) = crate::tls::peer_subject(stream.get_ref().1) {
                                connection.source = crate::source::tcp(peer, Some(&subject));
                            }
                            connection.run(stream, stop).await;
                        }
                        Ok(Err(e)) => {
                            telemetry::tcp_tls_refused();
                            tracing::info!(%peer, error = %e, "TLS handshake on the TCP listener failed; connection closed.");
                        }
                        Err(_) => {
                            telemetry::tcp_tls_refused();
                            tracing::info!(%peer, "TLS handshake on the TCP listener timed out; connection closed.");
                        }
                    }
                }
            }
            drop(permit);
        });
    }
}

/// One client connection.
struct Connection {
    ingest: Arc<Ingest>,
    config: Arc<TcpConfig>,
    source: Arc<str>,
    peer: SocketAddr,
    /// Lines read so far, to number dead letters.
    line: usize,
    /// Queued chunks not yet committed, oldest first: each chunk's pieces and bytes.
    in_flight: std::collections::VecDeque<(Receipt, usize)>,
}

impl Connection {
    async fn run<S>(mut self, socket: S, stop: CancellationToken)
    where
        S: tokio::io::AsyncRead + Unpin + Send,
    {
        tracing::debug!(peer = %self.peer, "TCP connection opened.");
        telemetry::tcp_connection_opened();
        let mut frames = FramedRead::with_capacity(
            socket,
            LineCodec::new(self.config.max_line_bytes),
            READ_BUFFER,
        );
        let idle = self.config.idle_timeout;
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                next = tokio::time::timeout(idle, frames.next()) => match next {
                    Err(_) => {
                        tracing::info!(peer = %self.peer, idle_s = idle.as_secs(), "Closing an idle TCP connection.");
                        break;
                    }
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(peer = %self.peer, error = %e, "TCP connection failed.");
                        break;
                    }
                    Ok(Some(Ok(frame))) => frame,
                },
            };
            // Take the lines that are already read too, up to a bound, to queue them at once.
            let mut bytes = first.len();
            let mut chunk = vec![first];
            let mut ended = false;
            while chunk.len() < MAX_CHUNK_LINES && bytes < MAX_CHUNK_BYTES {
                match frames.next().now_or_never() {
                    Some(Some(Ok(frame))) => {
                        bytes += frame.len();
                        chunk.push(frame);
                    }
                    Some(None) | Some(Some(Err(_))) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            if !self.ingest_chunk(chunk).await || ended {
                break;
            }
        }
        telemetry::tcp_connection_closed();
        tracing::debug!(peer = %self.peer, lines = self.line, "TCP connection closed.");
    }

    /// Routes, validates and queues `chunk`, waiting for room (this is what pauses the
    /// reads). `false` if Sluice is shutting down and the lines could not be queued.
    async fn ingest_chunk(&mut self, chunk: Vec<Frame>) -> bool {
        // Room for the values these lines parse into, before parsing them; waiting here
        // stops reading the socket like a full queue does.
        let memory = self.ingest.memory();
        let estimate: usize = chunk
            .iter()
            .map(|f| match f {
                Frame::Line(b) | Frame::Unterminated(b) => decode_estimate(b),
                Frame::TooLong(b) => b.len(),
            })
            .sum();
        let mut held = Reservation::default();
        if memory
            .reserve(&mut held, estimate.min(memory.bytes()), None)
            .await
            .is_err()
        {
            return false;
        }
        let filing = self.file(&chunk);
        let (lines, bytes) = (filing.len(), filing.bytes());
        match self
            .ingest
            .submit(filing, Until::Durable, Handing::Pieces)
            .await
        {
            Ok(receipt) => {
                // With a spool, a line counts as read once it is on disk: the next read
                // waits for that.
                receipt.durable().await;
                self.in_flight.push_back((receipt, bytes));
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, lines, error = %e, "Lines read from TCP could not be queued.");
                return false;
            }
        }
        // The rows are queued (their queue counts them now).
        drop(held);
        self.read_ahead().await
    }

    /// Files the lines of `chunk`, numbering them on from the connection's count.
    fn file(&mut self, chunk: &[Frame]) -> Filing {
        let mut filing = self.ingest.filing();
        let route = Route::Field(ByField::new(
            &self.ingest.registry,
            &self.config.stream_field,
            self.config.default_stream.as_deref(),
        ));
        let first = self.line;
        self.line += chunk.len();
        let max = self.config.max_line_bytes;
        let events = chunk.iter().zip(first..).map(|(frame, index)| match frame {
            Frame::Line(raw) => Event::text(index, raw),
            Frame::Unterminated(raw) => Event::parsed(index, raw, parse_object(raw).map_err(|e| {
                format!("the connection closed in the middle of this line (no newline): {e}")
            })),
            Frame::TooLong(prefix) => Event {
                index,
                raw: prefix,
                read: Read::Refused(Stage::Parse, format!(
                    "line too long: more than tcp.max_line_bytes ({max} bytes); its first {} bytes are kept here",
                    prefix.len()
                )),
            },
        });
        filing.file(&route, &self.source, chrono::Utc::now(), events);
        filing
    }

    /// Waits until what this connection queued is mostly committed; `false` if Sluice
    /// is stopping.
    async fn read_ahead(&mut self) -> bool {
        // Read on only once what this connection queued is mostly committed.
        while self.in_flight.iter().map(|(_, bytes)| bytes).sum::<usize>() > READ_AHEAD_BYTES {
            let Some((receipt, _)) = self.in_flight.pop_front() else {
                break;
            };
            if receipt.committed().await.is_err() {
                // Sluice is stopping; what was queued is flushed all the same.
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], max: usize) -> Vec<Frame> {
        let mut codec = LineCodec::new(max);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        while let Some(f) = codec.decode_eof(&mut buf).unwrap() {
            out.push(f);
        }
        assert_eq!(
            codec.decode_eof(&mut buf).unwrap(),
            None,
            "EOF may be polled again"
        );
        out
    }

    #[test]
    fn a_partial_line_searched_before_eof_is_returned_once_at_eof() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"{\"a\":1}\n{\"partial"[..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Line(Bytes::from_static(b"{\"a\":1}")))
        );
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(
            codec.decode_eof(&mut buf).unwrap(),
            Some(Frame::Unterminated(Bytes::from_static(b"{\"partial")))
        );
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn lines_end_at_lf_or_crlf_and_a_last_line_without_newline_is_unterminated() {
        let f = frames(b"{\"a\":1}\r\n{\"b\":2}\n{\"c\"", 100);
        assert_eq!(
            f,
            vec![
                Frame::Line(Bytes::from_static(b"{\"a\":1}")),
                Frame::Line(Bytes::from_static(b"{\"b\":2}")),
                Frame::Unterminated(Bytes::from_static(b"{\"c\"")),
            ]
        );
    }

    #[test]
    fn a_long_line_keeps_its_prefix_and_the_next_line_is_read() {
        let mut input = vec![b'x'; 50];
        input.extend_from_slice(b"\nok\n");
        let f = frames(&input, 10);
        assert_eq!(
            f,
            vec![
                Frame::TooLong(Bytes::from(vec![b'x'; 10])),
                Frame::Line(Bytes::from_static(b"ok"))
            ]
        );
    }
}
