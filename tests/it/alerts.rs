//! `deploy/`: every metric the alerting rules and the Grafana dashboard name is one that
//! Sluice exports (read from a real `/metrics` scrape), and the dashboard is valid JSON.
//! `promtool check rules` and `promtool test rules` run in `.ci/run`.

use std::collections::BTreeSet;

use serde_json::json;

use crate::helpers::{Db, TestDb};

fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("sluice_") {
        let start = i + pos;
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |e| start + e);
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[tokio::test]
async fn the_alert_rules_and_dashboard_name_only_metrics_sluice_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/sluice-alerts.yml")).unwrap();
    let dashboard =
        std::fs::read_to_string(root.join("deploy/grafana/sluice-dashboard.json")).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 8));

    // A Sluice with a spool, after one spooled event, so every family has a sample.
    // One webhook source too: its refusal series are registered per webhook.
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let spool = tempfile::tempdir().unwrap();
    let sluice = crate::helpers::spawn_configured(
        None,
        &db,
        spool.path(),
        "[streams.reading]\nexpect_every = \"1h\"\n\n[webhooks.t]\nstream = \"reading\"\nverify = \"none\"\n",
        &[(
            "SLUICE_SPOOL_DIR",
            spool.path().join("spool").display().to_string(),
        )],
    );
    let client = reqwest::Client::new();
    let r = client
        .post(format!(
            "http://{}/v1/streams/reading/events?ack=accepted",
            sluice.http
        ))
        .body(json!({"seq": 1, "sensor": "a", "value": 1.0}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    db.wait_for_count("reading", 1).await;
    let scrape = crate::helpers::metrics_text(&sluice.http).await;
    let exported = names_in(&scrape);
    let referenced: BTreeSet<String> = names_in(&rules)
        .union(&names_in(&dashboard))
        .cloned()
        .collect();
    assert!(referenced.len() >= 10, "{referenced:?}");
    let missing: Vec<&String> = referenced
        .iter()
        .filter(|n| !exported.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}\n{scrape}"
    );
    sluice.terminate().await;
}

/// A stream with `expect_every` and no traffic shows the two metrics from which
/// `SluiceStreamSilent` fires (`time() - last commit > expected interval`: the rule and
/// its promtool case are in deploy/prometheus), and a commit makes it fresh again.
#[tokio::test]
async fn a_silent_stream_shows_what_sluice_stream_silent_fires_on() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/sluice-alerts.yml")).unwrap();
    let rule = &rules[rules.find("alert: SluiceStreamSilent").expect("the rule")..];
    let rule = &rule[..rule.find("- alert:").unwrap_or(rule.len())];
    for name in [
        "sluice_stream_last_commit_timestamp_seconds",
        "sluice_stream_expected_interval_seconds",
    ] {
        assert!(rule.contains(name), "{rule}");
    }
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sluice = crate::helpers::spawn_configured(
        None,
        &db,
        dir.path(),
        "[streams.reading]\nexpect_every = \"2s\"\n",
        &[],
    );
    let labels = "stream=\"reading\"";
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let last_commit = || async {
        crate::helpers::metric(
            &sluice.http,
            "sluice_stream_last_commit_timestamp_seconds",
            labels,
        )
        .await
        .expect("the last commit of a stream, from its start")
    };
    let expected = crate::helpers::metric(
        &sluice.http,
        "sluice_stream_expected_interval_seconds",
        labels,
    )
    .await;
    assert_eq!(expected, Some(2.0));
    assert!(now() - last_commit().await < 2.0, "fresh at start-up");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(
        now() - last_commit().await > 2.0,
        "silent for longer than expected"
    );
    // A stream without expect_every has no expected interval.
    let none = crate::helpers::metric(
        &sluice.http,
        "sluice_stream_expected_interval_seconds",
        "stream=\"app_log\"",
    )
    .await;
    assert_eq!(none, None);
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/streams/reading/events", sluice.http))
        .body(json!({"seq": 1, "sensor": "a", "value": 1.0}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        now() - last_commit().await < 2.0,
        "fresh again after a commit"
    );
    sluice.terminate().await;
}
