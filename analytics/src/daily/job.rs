//! Aggregating days: the steps for one source and a list of days, in order, under the
//! source's lock.
//!
//! A fleet day is first exported to the lake from the bridge's tables (positions, tours
//! with their invoices, orders of that local day), then aggregated from the lake's files,
//! stored (replacing the day), and published. An NYC day is already in the lake (the import
//! put it there); it is aggregated, stored and published. Publication comes last, after all
//! the days of a call, so that the running totals of later days, which each day may move,
//! are sent once.
//!
//! Catching up: every fleet day from the oldest data in the bridge's tables up to yesterday
//! that has no row yet, every NYC day in the lake that has no row yet, and any publication a
//! failure left undone.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use jiff::civil::Date;
use tokio_postgres::Client;
use tracing::info;

use super::summary::{DaySummary, Source, StoredDay};
use super::{calendar, fleet, nyc, publish, schedule, store};
use crate::lake::{self, Lake};
use crate::Config;

/// Aggregates days; keeps one PostgreSQL connection (made again after it breaks) and the
/// lake's client.
pub struct Aggregator {
    config: Arc<Config>,
    lake: Lake,
    client: Option<Client>,
}

impl Aggregator {
    /// Opens the lake's client; connects to PostgreSQL on first use.
    pub async fn new(config: Arc<Config>) -> anyhow::Result<Aggregator> {
        let lake = Lake::open(&config.lake).await?;
        Ok(Aggregator {
            config,
            lake,
            client: None,
        })
    }

    /// Aggregates `days` of `source` (each replacing what was stored) and publishes them;
    /// `each` sees every day's stored row as soon as it is stored.
    pub async fn run_days(
        &mut self,
        source: Source,
        days: &[Date],
        each: &mut (dyn FnMut(&StoredDay) + Send),
    ) -> anyhow::Result<()> {
        let mut client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => crate::db::connect(&self.config.postgres).await,
        };
        // Boxed: the future of a whole run (DataFusion's included) is too deep a type to be
        // laid out inside its callers' futures.
        let result = Box::pin(self.locked(&mut client, source, days, each)).await;
        if let Err(e) = &result {
            metrics::counter!("analytics_daily_failures_total", "source" => source.name())
                .increment(1);
            tracing::warn!(
                source = source.name(),
                error = format!("{e:#}"),
                "daily aggregation failed"
            );
        }
        if !client.is_closed() {
            self.client = Some(client);
        }
        result
    }

    async fn locked(
        &self,
        client: &mut Client,
        source: Source,
        days: &[Date],
        each: &mut (dyn FnMut(&StoredDay) + Send),
    ) -> anyhow::Result<()> {
        store::lock(client, source).await?;
        let result = self.aggregate_and_publish(client, source, days, each).await;
        let unlocked = store::unlock(client, source).await;
        result?;
        unlocked
    }

    async fn aggregate_and_publish(
        &self,
        client: &mut Client,
        source: Source,
        days: &[Date],
        each: &mut (dyn FnMut(&StoredDay) + Send),
    ) -> anyhow::Result<()> {
        for &day in days {
            let started = Instant::now();
            let summary = self
                .summarize(client, source, day)
                .await
                .with_context(|| format!("aggregating {source} day {day}"))?;
            let moved = store::replace_day(client, &summary)
                .await
                .with_context(|| format!("storing {source} day {day}"))?;
            let stored = store::stored_day(&*client, day, source)
                .await?
                .with_context(|| {
                    format!("{source} day {day} is not in daily_fleet after storing it")
                })?;
            let seconds = started.elapsed().as_secs_f64();
            metrics::counter!("analytics_daily_days_aggregated_total", "source" => source.name())
                .increment(1);
            metrics::histogram!("analytics_daily_day_seconds", "source" => source.name())
                .record(seconds);
            info!(source = source.name(), day = %day, trips = stored.totals.trips, later_days_moved = moved, seconds, "day aggregated");
            each(&stored);
        }
        let published = publish::publish_unpublished(&self.config, &self.lake, client, source)
            .await
            .with_context(|| format!("publishing the {source} daily aggregates to the lake"))?;
        if published > 0 {
            info!(
                source = source.name(),
                days = published,
                "daily aggregates published to the lake"
            );
        }
        Ok(())
    }

    async fn summarize(
        &self,
        client: &Client,
        source: Source,
        day: Date,
    ) -> anyhow::Result<DaySummary> {
        match source {
            Source::Fleet => {
                lake::export_day(&self.config, &self.lake, client, day)
                    .await
                    .with_context(|| format!("exporting day {day} to the lake"))?;
                let ctx = self.lake.session_of(crate::lake::schema::DATASETS).await?;
                fleet::summarize(&ctx, day).await
            }
            Source::Nyc => {
                let ctx = self.lake.session_of(crate::lake::schema::DATASETS).await?;
                nyc::summarize(&ctx, day).await
            }
        }
    }

    /// The fleet days up to `yesterday` that have no row, oldest first.
    pub async fn missing_fleet_days(&mut self, yesterday: Date) -> anyhow::Result<Vec<Date>> {
        let tz = self.config.tz();
        let client = self.connected().await;
        let Some(first) = store::first_fleet_day(client, &tz).await? else {
            return Ok(Vec::new());
        };
        let done: HashSet<Date> = store::days_of(client, Source::Fleet)
            .await?
            .into_iter()
            .collect();
        Ok(calendar::days(first, yesterday)
            .into_iter()
            .filter(|day| !done.contains(day))
            .collect())
    }

    /// The NYC days in the lake that have no row, oldest first.
    pub async fn missing_nyc_days(&mut self) -> anyhow::Result<Vec<Date>> {
        let ctx = self.lake.session_of(crate::lake::schema::DATASETS).await?;
        let in_lake = nyc::days_in_lake(&ctx).await?;
        let client = self.connected().await;
        let done: HashSet<Date> = store::days_of(client, Source::Nyc)
            .await?
            .into_iter()
            .collect();
        Ok(in_lake
            .into_iter()
            .filter(|day| !done.contains(day))
            .collect())
    }

    /// The NYC days of `[from, to]` that have trips in the lake or a row, oldest first.
    pub async fn nyc_days_between(&mut self, from: Date, to: Date) -> anyhow::Result<Vec<Date>> {
        let ctx = self.lake.session_of(crate::lake::schema::DATASETS).await?;
        let mut days = nyc::days_in_lake(&ctx).await?;
        days.extend(store::days_of(self.connected().await, Source::Nyc).await?);
        days.retain(|day| (from..=to).contains(day));
        days.sort();
        days.dedup();
        Ok(days)
    }

    async fn connected(&mut self) -> &Client {
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => crate::db::connect(&self.config.postgres).await,
        };
        self.client.insert(client)
    }
}

impl schedule::DayJobs for Aggregator {
    async fn catch_up(&mut self, yesterday: Date) -> anyhow::Result<()> {
        let fleet_days = self.missing_fleet_days(yesterday).await?;
        if !fleet_days.is_empty() {
            info!(days = fleet_days.len(), first = %fleet_days[0], "daily: catching up fleet days");
        }
        self.run_days(Source::Fleet, &fleet_days, &mut |_| {})
            .await?;
        let nyc_days = self.missing_nyc_days().await?;
        if !nyc_days.is_empty() {
            info!(days = nyc_days.len(), first = %nyc_days[0], "daily: catching up NYC days");
        }
        self.run_days(Source::Nyc, &nyc_days, &mut |_| {}).await
    }

    async fn aggregate(&mut self, day: Date) -> anyhow::Result<()> {
        self.run_days(Source::Fleet, &[day], &mut |_| {}).await
    }
}
