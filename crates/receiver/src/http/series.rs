//! `GET /api/series`: one metric of one service over a range, one value
//! per pixel column at most. The client says how wide its plot is; the
//! step is the range divided by that width, and [`Query::run`] (the code
//! behind `receiver query --step`) aggregates each series to it — a week of
//! 10 s samples arrives as ~1000 points per series, not 60,000.

use super::api::{ApiError, Params};
use crate::query::Query;
use crate::query::buckets::Agg;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::BTreeMap;

/// Widest plot served, in pixels (points per series).
const MAX_WIDTH: u64 = 4000;
const HOUR_MS: u64 = 3_600_000;
/// The shortest step: finer than a second is finer than any schedule.
const MIN_STEP_MS: u64 = 1000;

type Labels = Vec<(String, String)>;

/// The values of one metric, one list per label set.
#[derive(Debug, Serialize)]
pub struct Series {
    pub host: String,
    pub service: String,
    pub metric: String,
    pub unit: String,
    pub since_ms: u64,
    pub until_ms: u64,
    pub step_ms: u64,
    pub agg: &'static str,
    pub series: Vec<OneSeries>,
}

/// One label set's points: `[time_ms, value]`, oldest first, each the
/// aggregate of the bucket starting at `time_ms`.
#[derive(Debug, Serialize)]
pub struct OneSeries {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(u64, f64)>,
}

/// The query a request asks for, or what is wrong with it.
pub fn request(mut params: Params, now_ms: u64) -> Result<Query, ApiError> {
    let mut required = |name: &str| {
        params.take(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "give {name}=: a series is one metric of one service of one host"
            ))
        })
    };
    let host = required("host")?;
    let service = required("service")?;
    let metric = required("metric")?;
    let labels = params
        .take_all("label")
        .into_iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(ApiError::bad_request(format!(
                "label={l:?}: write label=key=value, e.g. label=cpu=cpu0"
            ))),
        })
        .collect::<Result<_, _>>()?;
    let since_ms = params.time("since", now_ms)?.unwrap_or(now_ms - HOUR_MS);
    let until_ms = params.time("until", now_ms)?.unwrap_or(now_ms);
    if since_ms >= until_ms {
        return Err(ApiError::bad_request("since must be before until"));
    }
    let width = params.number("width", 10..=MAX_WIDTH, 1000)?;
    let agg = match params.take("agg").as_deref() {
        None | Some("avg") => Agg::Avg,
        Some("min") => Agg::Min,
        Some("max") => Agg::Max,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "agg={other:?}: give avg, min or max"
            )));
        }
    };
    params.finish(&[
        "host", "service", "metric", "label", "since", "until", "width", "agg",
    ])?;
    Ok(Query {
        host: Some(host),
        service: Some(service),
        metric: Some(metric),
        labels,
        since_ms,
        until_ms,
        step_ms: Some(((until_ms - since_ms) / width).max(MIN_STEP_MS)),
        agg,
        // The running receiver has recorded every configured host and
        // service in the store, which Query::run consults for names.
        configured: Default::default(),
    })
}

/// Read `query`: an unknown host, service or metric is a 404 naming it.
pub fn read(conn: &Connection, query: &Query) -> Result<Series, ApiError> {
    let points = query.run(conn).map_err(|e| {
        if e.chain().any(|c| c.is::<rusqlite::Error>()) {
            ApiError::internal(e)
        } else {
            ApiError::not_found(format!("{e:#}"))
        }
    })?;
    let unit = points
        .first()
        .map(|p| p.sample.unit.clone())
        .unwrap_or_default();
    let mut by_labels: BTreeMap<Labels, Vec<(u64, f64)>> = BTreeMap::new();
    for p in points {
        by_labels
            .entry(p.sample.labels)
            .or_default()
            .push((p.time_ms, p.sample.value));
    }
    let name = |o: &Option<String>| o.clone().unwrap_or_default();
    Ok(Series {
        host: name(&query.host),
        service: name(&query.service),
        metric: name(&query.metric),
        unit,
        since_ms: query.since_ms,
        until_ms: query.until_ms,
        step_ms: query.step_ms.unwrap_or(0),
        agg: match query.agg {
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
        },
        series: by_labels
            .into_iter()
            .map(|(labels, points)| OneSeries {
                labels: labels.into_iter().collect(),
                points,
            })
            .collect(),
    })
}
