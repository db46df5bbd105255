//! The load: NDJSON requests over HTTP/1.1 keep-alive connections, `json_lines` over
//! TCP, and single-event requests at a fixed rate. Any endpoint that speaks Sluice's
//! contract works (Sluice or the Python peer).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Most times one request is retried after a 503 before the run fails.
const MAX_RETRIES: usize = 10_000;

/// One keep-alive HTTP/1.1 connection.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Client {
    pub async fn connect(addr: &str) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client {
            sender,
            host: addr.to_owned(),
        })
    }

    /// GETs `path`; returns the body text of a 2xx answer.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<String> {
        self.sender.ready().await?;
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, &self.host)
            .body(Full::new(Bytes::new()))?;
        let res = self.sender.send_request(req).await?;
        let status = res.status();
        let text = res.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status.is_success(), "{path} answered {status}");
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// POSTs `body`; returns the status. A 503 is retried after its `Retry-After`
    /// (at most 1 s here, the load must keep flowing), so every event is eventually taken.
    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<u16> {
        for _ in 0..MAX_RETRIES {
            self.sender.ready().await?;
            let req = hyper::Request::post(path)
                .header(hyper::header::HOST, &self.host)
                .header(hyper::header::CONTENT_TYPE, content_type)
                .body(Full::new(body.clone()))?;
            let res = self.sender.send_request(req).await?;
            let status = res.status().as_u16();
            let retry_after = res
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let text = res.into_body().collect().await?.to_bytes();
            match status {
                503 => {
                    let wait = Duration::from_secs(retry_after.unwrap_or(1))
                        .min(Duration::from_millis(50));
                    tokio::time::sleep(wait).await;
                }
                200..=299 => return Ok(status),
                _ => anyhow::bail!(
                    "{path} answered {status}: {}",
                    String::from_utf8_lossy(&text)
                ),
            }
        }
        anyhow::bail!("{path} kept answering 503 after {MAX_RETRIES} tries")
    }
}

/// Runs a pull of `source` on the Sluice at `http` (`POST /v1/jobs/pull`) and waits
/// for its job to end; returns the job as JSON.
pub async fn pull_job(http: &str, source: &str) -> anyhow::Result<serde_json::Value> {
    let mut client = Client::connect(http).await?;
    client.sender.ready().await?;
    let req = hyper::Request::post("/v1/jobs/pull")
        .header(hyper::header::HOST, &client.host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::json!({ "source": source }).to_string(),
        )))?;
    let res = client.sender.send_request(req).await?;
    let status = res.status();
    let text = res.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.as_u16() == 202,
        "the pull was not started ({status}): {}",
        String::from_utf8_lossy(&text)
    );
    let started: serde_json::Value = serde_json::from_slice(&text)?;
    let id = started["id"].as_str().context("the job's id")?.to_owned();
    loop {
        let job: serde_json::Value =
            serde_json::from_str(&client.get(&format!("/v1/jobs/{id}")).await?)?;
        match job["state"].as_str() {
            Some("ready" | "running") => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => return Ok(job),
        }
    }
}

/// Latencies of the requests of one run.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        self.0[i].as_secs_f64() * 1000.0
    }
}

/// Sends `events` as NDJSON bodies of `batch` events over `connections` connections,
/// with `ack=commit`; returns the request latencies.
pub async fn http_batches(
    addr: &str,
    path: &str,
    events: Arc<Vec<String>>,
    batch: usize,
    connections: usize,
) -> anyhow::Result<Latencies> {
    let bodies = events
        .chunks(batch)
        .map(|c| {
            let mut body = c.join("\n");
            body.push('\n');
            Bytes::from(body)
        })
        .collect();
    send_all(
        addr,
        path,
        "application/x-ndjson",
        bodies,
        connections,
        None,
    )
    .await
}

/// Sends one event per request at `rate` requests/s, spread over `connections`
/// connections; latency counts from each request's scheduled time, so a slow answer
/// also charges the requests queued behind it (no coordinated omission).
pub async fn http_fixed_rate(
    addr: &str,
    path: &str,
    events: Arc<Vec<String>>,
    rate: f64,
    connections: usize,
) -> anyhow::Result<Latencies> {
    let bodies = events.iter().map(|e| Bytes::from(e.clone())).collect();
    send_all(
        addr,
        path,
        "application/json",
        bodies,
        connections,
        Some(rate),
    )
    .await
}

/// POSTs every body once, over `connections` connections that each take the next
/// unsent body. With `rate`, body `i` is sent no earlier than `i / rate` seconds after
/// the start and its latency counts from then; without, as fast as answers come.
async fn send_all(
    addr: &str,
    path: &str,
    content_type: &'static str,
    bodies: Vec<Bytes>,
    connections: usize,
    rate: Option<f64>,
) -> anyhow::Result<Latencies> {
    let bodies = Arc::new(bodies);
    let started = Instant::now() + Duration::from_millis(50);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (bodies, next, path) = (bodies.clone(), next.clone(), path.to_owned());
        let mut client = Client::connect(addr).await?;
        tasks.spawn(async move {
            let mut latencies = Latencies::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let from = match rate {
                    Some(rate) => {
                        let due = started + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                client.post(&path, content_type, body.clone()).await?;
                latencies.0.push(from.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    collect(tasks).await
}

/// Writes `events` as lines over `connections` TCP connections (each its share, in
/// order). The target routes them with its default stream (Sluice is started with
/// `tcp.default_stream`), so the bytes are the same for Sluice and the Python peer.
pub async fn tcp_lines(addr: &str, events: &[String], connections: usize) -> anyhow::Result<()> {
    let per = events.len().div_ceil(connections.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in events.chunks(per.max(1)) {
        let mut data = Vec::with_capacity(chunk.iter().map(|e| e.len() + 32).sum());
        for e in chunk {
            data.extend_from_slice(e.as_bytes());
            data.push(b'\n');
        }
        let mut socket = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        tasks.spawn(async move {
            socket.write_all(&data).await?;
            socket.shutdown().await?;
            anyhow::Ok(Latencies::default())
        });
    }
    collect(tasks).await.map(|_| ())
}

async fn collect(
    mut tasks: tokio::task::JoinSet<anyhow::Result<Latencies>>,
) -> anyhow::Result<Latencies> {
    let mut all = Latencies::default();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    Ok(all)
}
