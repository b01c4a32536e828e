//! The budget endpoint a bidder polls to stop over-budget campaigns:
//! `GET /budget/today` on the admin server returns each campaign's spend
//! (impression cost, micros, per currency) since the start of the current
//! UTC day, from the committed hourly totals — exact, and at most one batch
//! (`stats.batch-wait`) behind the events.
//!
//! Query parameters: `campaign_id` (one campaign only), `at` (milliseconds
//! since the epoch: the day holding that instant instead of today, for
//! back-office checks and tests). PostgreSQL unreachable → 503 with the
//! reason, so a bidder keeps its last answer instead of trusting zeros.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use adpipe_runtime::telemetry::AdminRoutes;
use serde::{Deserialize, Serialize};

use crate::store::PgStore;

/// One campaign's spend in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignSpend {
    /// Campaign id.
    pub campaign_id: i64,
    /// ISO 4217 code of the spend.
    pub currency: String,
    /// Sum of the day's impression costs, micros.
    pub spend_micros: i64,
}

/// The endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetReport {
    /// Start of the UTC day reported, milliseconds since the epoch.
    pub day_start_ms: i64,
    /// When the answer was read, milliseconds since the epoch.
    pub read_at_ms: i64,
    /// Spend per campaign and currency, by campaign id.
    pub campaigns: Vec<CampaignSpend>,
}

#[derive(Deserialize)]
struct BudgetQuery {
    campaign_id: Option<i64>,
    at: Option<i64>,
}

/// Reads spend on one connection, opened on first use and again after a
/// failure.
struct SpendReader {
    url: String,
    schema: String,
    store: tokio::sync::Mutex<Option<PgStore>>,
}

impl SpendReader {
    async fn report(&self, query: BudgetQuery) -> Result<BudgetReport, String> {
        let now = adpipe_runtime::event_time::now_ms();
        let at = query.at.unwrap_or(now);
        let mut slot = self.store.lock().await;
        let store = match slot.take() {
            Some(store) if !store.is_closed() => store,
            _ => PgStore::connect(&self.url, &self.schema)
                .await
                .map_err(|error| format!("PostgreSQL unavailable: {error}"))?,
        };
        let spend = store
            .spend_today(at)
            .await
            .map_err(|error| format!("reading spend: {error}"))?;
        *slot = Some(store);
        Ok(BudgetReport {
            day_start_ms: at.div_euclid(86_400_000) * 86_400_000,
            read_at_ms: now,
            campaigns: spend
                .into_iter()
                .filter(|(campaign, _, _)| query.campaign_id.is_none_or(|only| only == *campaign))
                .map(|(campaign_id, currency, spend_micros)| CampaignSpend {
                    campaign_id,
                    currency,
                    spend_micros,
                })
                .collect(),
        })
    }
}

/// The `/budget/today` route, reading from PostgreSQL at `url`, `schema`.
pub fn routes(url: &str, schema: &str) -> AdminRoutes {
    let reader = Arc::new(SpendReader {
        url: url.to_owned(),
        schema: schema.to_owned(),
        store: tokio::sync::Mutex::new(None),
    });
    Arc::new(move |config: &mut web::ServiceConfig| {
        let reader = Arc::clone(&reader);
        config.route(
            "/budget/today",
            web::get().to(move |query: web::Query<BudgetQuery>| {
                let reader = Arc::clone(&reader);
                async move {
                    match reader.report(query.into_inner()).await {
                        Ok(report) => HttpResponse::Ok().json(report),
                        Err(reason) => HttpResponse::ServiceUnavailable().body(reason),
                    }
                }
            }),
        );
    })
}
