//! The JetStream loads: publish every event to a fresh JetStream stream (one message
//! each, not timed), then start `instances` Sluice processes consuming one durable
//! consumer and time them from the moment they listen until every event is a row.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;

use super::{db, procfs, start_sluice, Args, Outcome};

pub async fn drain(
    args: &Args,
    url: &str,
    db: &mut db::Db,
    events: &[String],
    instances: usize,
) -> anyhow::Result<Outcome> {
    let client = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("cannot reach NATS at {} (nats-server -js)", args.nats_url))?;
    let js = jetstream::new(client);
    let name = format!("SLUICE_BENCH_{}", std::process::id());
    let prefix = format!("sluicebench{}.", std::process::id());
    let _ = js.delete_stream(&name).await;
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}>")],
        ..Default::default()
    })
    .await
    .context("cannot create the JetStream stream")?;
    let published = Instant::now();
    let subject = format!("{prefix}{}", args.stream);
    for chunk in events.chunks(1000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for e in chunk {
            acks.push(js.publish(subject.clone(), e.clone().into()).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    eprintln!(
        "published {} events to JetStream in {:.1} s",
        events.len(),
        published.elapsed().as_secs_f64()
    );
    // The kernel would otherwise write the published messages back to disk during the
    // timed drain, on the same cores; the publishing is not what is measured.
    db.settle().await?;
    let config = std::env::temp_dir().join(format!("sluice-bench-{}-js.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[jetstream]\nurl = \"{}\"\nstream = \"{name}\"\nconsumer = \"sluice\"\nsubject_prefix = \"{prefix}\"\nmax_ack_pending = 40000\n",
            args.nats_url
        ),
    )?;
    let targets = (0..instances)
        .map(|_| start_sluice(args, url, None, Some(&config)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // As for the HTTP and TCP loads, the clock starts once Sluice listens (its
    // consumer connects just after).
    let started = Instant::now();
    let cpu_before: f64 = targets
        .iter()
        .map(|t| procfs::cpu_seconds(t.pid))
        .sum::<anyhow::Result<f64>>()?;
    let samplers: Vec<_> = targets
        .iter()
        .map(|t| procfs::RssSampler::start(t.pid))
        .collect();
    let timeout = Duration::from_secs(60 + (events.len() / 1000) as u64);
    let watch: Vec<String> = targets.iter().map(|t| t.http.clone()).collect();
    let done = db
        .wait_for(&args.table, events.len() as i64, timeout, &watch)
        .await?;
    let seconds = (done - started).as_secs_f64();
    let cpu = targets
        .iter()
        .map(|t| procfs::cpu_seconds(t.pid))
        .sum::<anyhow::Result<f64>>()?
        - cpu_before;
    let peak = samplers.iter().map(|s| s.peak_mib()).fold(0.0, f64::max);
    let (mut batches, mut rows, mut redelivered) = (0.0, 0.0, 0.0);
    for t in &targets {
        let text = super::load::Client::connect(&t.http)
            .await?
            .get("/metrics")
            .await?;
        batches += super::metric(&text, "sluice_batch_size_events_count");
        rows += super::metric(&text, "sluice_batch_size_events_sum");
        redelivered += super::metric(
            &text,
            "sluice_jetstream_messages_total{outcome=\"redelivered\"}",
        );
    }
    drop(targets);
    let _ = std::fs::remove_file(&config);
    let _ = js.delete_stream(&name).await;
    let bytes: usize = events.iter().map(|e| e.len()).sum();
    Ok(Outcome {
        mode: format!("jetstream{instances}"),
        events: events.len(),
        seconds,
        events_per_second: events.len() as f64 / seconds,
        mb_per_second: bytes as f64 / 1e6 / seconds,
        p50_ms: None,
        p99_ms: None,
        p999_ms: None,
        cpu_seconds: Some(cpu),
        peak_rss_mib: Some(peak),
        ratio_to_limits: Vec::new(),
        note: format!(
            "{instances} instance(s) on one durable consumer, from listening to the last row, max_ack_pending 40000; {:.0} rows per batch, {redelivered} redelivered",
            rows / batches.max(1.0)
        ),
    })
}
