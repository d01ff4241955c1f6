//! `receiver query`: stored values for people and scripts.
//!
//! - [`when`]: times printed as ISO-8601 (local or UTC) and range ends read
//!   as a duration back from now or an ISO-8601 time;
//! - [`names`]: an unknown host, service or metric is an error naming it;
//! - [`buckets`]: `--step` aggregation per bucket and series;
//! - [`output`]: the table, the JSON, and a stdout that may close early.

pub mod buckets;
pub mod names;
pub mod output;
pub mod when;

use crate::config::{Model, database_of};
use crate::store::{self, StoredReport, samples};
use anyhow::bail;
use buckets::Agg;
use output::Layout;
use rusqlite::Connection;
use sandglass_core::report::Sample;
use sandglass_core::time::now_ms;
use sandglass_core::units::HumanDuration;
use std::collections::BTreeSet;
use std::path::PathBuf;
use when::{TimeArg, TimeStyle};

/// The flags of `receiver query`.
#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    #[arg(long, default_value = "/etc/sandglass/receiver.toml")]
    pub config: PathBuf,
    /// One host. Without it, every host (then name a --service or a --metric).
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long)]
    pub service: Option<String>,
    #[arg(long)]
    pub metric: Option<String>,
    /// Only samples with this label; repeat it and a sample must carry all.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Start: a duration back from now (`10m`, `2h`, `7d`, `2w`) or an
    /// ISO-8601 time (`2026-12-02T18:00:00+01:00`; without an offset, local).
    #[arg(long, default_value = "1h")]
    pub since: TimeArg,
    /// End (excluded), written as --since is. Default: now.
    #[arg(long)]
    pub until: Option<TimeArg>,
    /// One value per bucket of this length and series (`5m`, `1h`, `1d`).
    #[arg(long)]
    pub step: Option<HumanDuration>,
    /// How --step combines the samples of a bucket [default: avg].
    #[arg(long, value_enum, requires = "step")]
    pub agg: Option<Agg>,
    /// Times in UTC (`2026-12-02T17:04:05Z`) instead of local time.
    #[arg(long, conflicts_with = "epoch")]
    pub utc: bool,
    /// Times as Unix milliseconds, as stored.
    #[arg(long)]
    pub epoch: bool,
    /// JSON: an array of points with `time_ms` and an ISO-8601 `time`.
    #[arg(long)]
    pub json: bool,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.into(), value.into())),
        _ => Err(format!(
            "invalid label {text:?}: write key=value, e.g. cpu=cpu0"
        )),
    }
}

/// One stored value (or, with `--step`, one bucket's).
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub time_ms: u64,
    pub host: String,
    pub service: String,
    pub sample: Sample,
    /// With `--step`: how many samples the bucket holds.
    pub count: Option<u64>,
}

/// What to read: a scope, a range, and how to reduce it.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub host: Option<String>,
    pub service: Option<String>,
    pub metric: Option<String>,
    pub labels: Vec<(String, String)>,
    pub since_ms: u64,
    pub until_ms: u64,
    pub step_ms: Option<u64>,
    pub agg: Agg,
    /// What the configuration names, known even if never stored.
    pub configured: names::Configured,
}

impl Query {
    /// The query the flags ask for, as of `now_ms`.
    pub fn from_args(args: &QueryArgs, now_ms: u64) -> anyhow::Result<Query> {
        let since_ms = args.since.resolve(now_ms);
        let until_ms = args.until.map_or(now_ms, |u| u.resolve(now_ms));
        if since_ms >= until_ms {
            bail!(
                "--since ({}) is not before --until ({})",
                when::utc(since_ms),
                when::utc(until_ms)
            );
        }
        if args.host.is_none() && args.service.is_none() && args.metric.is_none() {
            bail!("name a --host, or a --service or --metric to see across every host");
        }
        let step_ms = args.step.map(|s| s.0.as_millis() as u64);
        if step_ms == Some(0) {
            bail!("--step must be longer than 0");
        }
        Ok(Query {
            host: args.host.clone(),
            service: args.service.clone(),
            metric: args.metric.clone(),
            labels: args.labels.clone(),
            since_ms,
            until_ms,
            step_ms,
            agg: args.agg.unwrap_or_default(),
            configured: names::Configured::new(),
        })
    }

    /// The points, oldest first; an error naming an unknown host, service or
    /// metric. A known series without data in the range gives none.
    pub fn run(&self, conn: &Connection) -> anyhow::Result<Vec<Point>> {
        let host = self.host.as_deref();
        let service = self.service.as_deref();
        if let Some(h) = host {
            names::check_host(conn, &self.configured, h)?;
        }
        if let Some(s) = service {
            names::check_service(conn, &self.configured, host, s)?;
        }
        let points = match &self.metric {
            Some(metric) => self.series_points(conn, metric)?,
            None => self.report_points(conn)?,
        };
        Ok(match self.step_ms {
            Some(step) => buckets::aggregate(points, step, self.agg),
            None => points,
        })
    }

    /// The points of the metric in scope, read without decoding the rest
    /// of each report.
    fn series_points(&self, conn: &Connection, metric: &str) -> anyhow::Result<Vec<Point>> {
        let (host, service) = (self.host.as_deref(), self.service.as_deref());
        let found = samples::metric(
            conn,
            (host, service),
            metric,
            &self.labels,
            (self.since_ms, self.until_ms),
        )?;
        let seen: BTreeSet<&str> = found.first().map(|_| metric).into_iter().collect();
        names::check_metric(conn, host, service, metric, &seen)?;
        Ok(found
            .into_iter()
            .map(|f| Point {
                time_ms: f.time_ms,
                host: f.host,
                service: f.service,
                sample: f.sample,
                count: None,
            })
            .collect())
    }

    /// The wanted samples of every report in scope.
    fn report_points(&self, conn: &Connection) -> anyhow::Result<Vec<Point>> {
        let reports = store::reports(
            conn,
            self.host.as_deref(),
            self.service.as_deref(),
            self.since_ms,
            self.until_ms,
        )?;
        Ok(reports
            .into_iter()
            .flat_map(points_of)
            .filter(|p| self.wants(&p.sample))
            .collect())
    }

    fn wants(&self, sample: &Sample) -> bool {
        self.metric.as_ref().is_none_or(|m| sample.name == *m)
            && self
                .labels
                .iter()
                .all(|wanted| sample.labels.contains(wanted))
    }
}

fn points_of(report: StoredReport) -> impl Iterator<Item = Point> {
    let StoredReport {
        host,
        service,
        time_ms,
        samples,
        ..
    } = report;
    samples.into_iter().map(move |sample| Point {
        time_ms,
        host: host.clone(),
        service: service.clone(),
        sample,
        count: None,
    })
}

/// `receiver query`: read, then print for a person or a script.
pub fn command(args: QueryArgs) -> anyhow::Result<()> {
    let mut query = Query::from_args(&args, now_ms())?;
    let database = match Model::load(&args.config) {
        Ok(model) => {
            query.configured = configured(&model);
            model.settings.database
        }
        Err(_) => {
            let (database, error) = database_of(&args.config)?;
            let error = error.map_or(String::new(), |e| format!("{e:#}"));
            output::note(&format!(
                "warning: {error}\nwarning: showing what the database {} holds",
                database.display()
            ));
            database
        }
    };
    let conn = store::open_existing(&database)?;
    let points = query.run(&conn)?;
    let time = match (args.utc, args.epoch) {
        (true, _) => TimeStyle::Utc,
        (_, true) => TimeStyle::Epoch,
        _ => TimeStyle::Local,
    };
    if points.is_empty() {
        output::note(&empty_note(&query, time));
    }
    if args.json {
        return sandglass_daemon::print(&output::json(&points, time)?);
    }
    let layout = Layout {
        time,
        host_column: query.host.is_none(),
        agg: query.step_ms.map(|_| query.agg),
    };
    sandglass_daemon::print(&output::table(&points, layout))
}

fn configured(model: &Model) -> names::Configured {
    model
        .hosts
        .iter()
        .map(|(name, host)| {
            let services = host.schedule.services.iter().map(|s| s.name.clone());
            (name.clone(), services.collect())
        })
        .collect()
}

/// Why nothing was printed: the range (and the labels) had no samples.
fn empty_note(query: &Query, time: TimeStyle) -> String {
    let mut text = format!(
        "no samples between {} and {}",
        time.format(query.since_ms),
        time.format(query.until_ms)
    );
    if !query.labels.is_empty() {
        let labels: Vec<String> = query
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        text += &format!(" with {}", labels.join(", "));
    }
    text
}

#[cfg(test)]
mod tests;
