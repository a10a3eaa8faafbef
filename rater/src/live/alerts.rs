//! Threshold notifications: each budget threshold crossed by committed spend is notified once
//! per period, whatever restarts or takeovers happen.
//!
//! The crossing's key is created in the KV bucket `<usage stream>_SPEND_ALERTS` (create-only:
//! one instance, once) with the value `pending`; then the alert is published to the stream
//! `<usage stream>_ALERTS` on `<root>.alerts.<customer>` (`Nats-Msg-Id` the crossing id; the
//! payments service turns each into a signed webhook to the customer's endpoint) and recorded
//! in `spend_alerts`; then the key becomes `sent`. A crossing found `pending` after a crash is
//! sent again (JetStream's duplicate window and the webhook's notification id absorb a repeat);
//! one found `sent` is only marked notified.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::HeaderMap;
use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_platform::NatsConfig;

use super::book::Crossing;

/// Where alerts go.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub bucket: String,
    pub stream: String,
    /// `<root>.alerts`: a customer's alerts are on `<root>.alerts.<customer>`.
    pub subject_root: String,
    pub replicas: usize,
}

impl AlertsConfig {
    pub fn new(nats: &NatsConfig, spend_root: &str, replicas: usize) -> AlertsConfig {
        AlertsConfig {
            bucket: format!("{}_SPEND_ALERTS", nats.stream),
            stream: format!("{}_ALERTS", nats.stream),
            subject_root: format!("{spend_root}.alerts"),
            replicas,
        }
    }
}

/// The alert as published (and as the webhook body carries it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// `spend.threshold_crossed` (the crossing's own `kind` is the budget's: amount or
    /// quantity).
    #[serde(rename = "type")]
    pub event_type: String,
    pub alert_id: String,
    #[serde(flatten)]
    pub crossing: Crossing,
    pub crossed_at_ms: i64,
}

/// Why an alert could not be sent now (it is retried at the next change or rebuild).
#[derive(Debug, thiserror::Error)]
#[error("alerts: {0}")]
pub struct AlertError(String);

/// The alert side of a decider.
#[derive(Clone)]
pub struct Alerts {
    js: jetstream::Context,
    kv: kv::Store,
    db: Client,
    cfg: AlertsConfig,
}

#[derive(clickhouse::Row, Serialize)]
struct Row<'a> {
    alert_id: &'a str,
    customer: &'a str,
    budget_id: &'a str,
    agent: &'a str,
    meter: &'a str,
    period_start: u32,
    threshold: u8,
    spent: String,
    limit_value: String,
    crossed_at_ms: i64,
}

impl Alerts {
    /// Opens the bucket and declares the stream.
    pub async fn open(
        js: &jetstream::Context,
        db: &Client,
        cfg: AlertsConfig,
    ) -> Result<Alerts, AlertError> {
        let kv = tally_platform::streams::kv_bucket(js, &cfg.bucket, cfg.replicas)
            .await
            .map_err(|e| AlertError(e.to_string()))?;
        js.get_or_create_stream(stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![format!("{}.>", cfg.subject_root)],
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(30 * 86_400),
            duplicate_window: Duration::from_secs(600),
            num_replicas: cfg.replicas.max(1),
            ..Default::default()
        })
        .await
        .map_err(|e| AlertError(format!("stream {}: {e}", cfg.stream)))?;
        Ok(Alerts {
            js: js.clone(),
            kv,
            db: db.clone(),
            cfg,
        })
    }

    /// Notifies `c` unless it already was; `Ok(true)` when this call sent it.
    pub async fn notify(&self, c: &Crossing, now_ms: i64) -> Result<bool, AlertError> {
        let key = c.id();
        match self.kv.create(&key, "pending".into()).await {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let state = self
                    .kv
                    .get(&key)
                    .await
                    .map_err(|e| AlertError(e.to_string()))?;
                if state.as_deref() != Some(b"pending".as_slice()) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(AlertError(e.to_string())),
        }
        let alert = Alert {
            event_type: "spend.threshold_crossed".into(),
            alert_id: key.clone(),
            crossing: c.clone(),
            crossed_at_ms: now_ms,
        };
        let body = serde_json::to_vec(&alert).map_err(|e| AlertError(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", key.as_str());
        self.js
            .publish_with_headers(
                format!("{}.{}", self.cfg.subject_root, c.customer),
                headers,
                body.into(),
            )
            .await
            .map_err(|e| AlertError(e.to_string()))?
            .await
            .map_err(|e| AlertError(e.to_string()))?;
        let row = Row {
            alert_id: &key,
            customer: &c.customer,
            budget_id: &c.budget_id,
            agent: c.agent.as_deref().unwrap_or_default(),
            meter: c.meter.as_deref().unwrap_or_default(),
            period_start: u32::try_from(c.period_start_ms / 1000).unwrap_or(0),
            threshold: c.threshold,
            spent: c.spent.to_string(),
            limit_value: c.limit.to_string(),
            crossed_at_ms: now_ms,
        };
        let insert = async {
            let mut ins = self.db.insert::<Row<'static>>("spend_alerts").await?;
            ins.write(&row).await?;
            ins.end().await
        };
        insert.await.map_err(|e| AlertError(e.to_string()))?;
        self.kv
            .put(&key, "sent".into())
            .await
            .map_err(|e| AlertError(e.to_string()))?;
        Ok(true)
    }
}
