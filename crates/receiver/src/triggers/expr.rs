//! A trigger's condition as written in `receiver.toml`:
//!
//! ```text
//! last > 0              the newest value
//! avg(5m) > 90          mean over the last 5 minutes (or avg(3): the last 3 values)
//! min(3) < 10           smallest of the last 3 values (or over a duration)
//! max(10m) >= 1e6       largest over the last 10 minutes
//! rate(1m) > 1000       per-second increase over the last minute (counter resets counted)
//! change != 0           newest value minus the one before
//! nodata(5m)            no value for 5 minutes
//! ```
//!
//! Comparisons: `>`, `>=`, `<`, `<=`, `==`, `!=`.

use sandglass_core::units::HumanDuration;
use std::fmt;
use std::time::Duration;

/// Which values a function looks at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Span {
    /// Values no older than this before the newest one.
    Time(Duration),
    /// The newest N values.
    Count(usize),
}

/// The value a condition compares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Function {
    Last,
    Avg(Span),
    Min(Span),
    Max(Span),
    /// Per-second increase over the span; a decrease is a counter reset.
    Rate(Duration),
    Change,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Above,
    AtLeast,
    Below,
    AtMost,
    Equal,
    NotEqual,
}

impl Comparison {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Above => value > threshold,
            Comparison::AtLeast => value >= threshold,
            Comparison::Below => value < threshold,
            Comparison::AtMost => value <= threshold,
            Comparison::Equal => value == threshold,
            Comparison::NotEqual => value != threshold,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Comparison::Above => ">",
            Comparison::AtLeast => ">=",
            Comparison::Below => "<",
            Comparison::AtMost => "<=",
            Comparison::Equal => "==",
            Comparison::NotEqual => "!=",
        }
    }
}

/// A parsed condition.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Condition {
    Compare {
        function: Function,
        comparison: Comparison,
        threshold: f64,
    },
    /// True once no value has arrived for this long.
    NoData(Duration),
}

impl Condition {
    /// How far back the values this condition needs reach: a time span and
    /// a count (the window keeps enough for both).
    pub fn needs(&self) -> (Duration, usize) {
        match self {
            Condition::Compare { function, .. } => match function {
                Function::Last => (Duration::ZERO, 1),
                Function::Change => (Duration::ZERO, 2),
                Function::Rate(d) => (*d, 2),
                Function::Avg(span) | Function::Min(span) | Function::Max(span) => match span {
                    Span::Time(d) => (*d, 1),
                    Span::Count(n) => (Duration::ZERO, *n),
                },
            },
            Condition::NoData(_) => (Duration::ZERO, 1),
        }
    }
}

impl std::str::FromStr for Condition {
    type Err = String;

    fn from_str(text: &str) -> Result<Condition, String> {
        let bad = |why: &str| {
            format!(
                "invalid condition {text:?}: {why}; write e.g. \"avg(5m) > 90\", \"last > 0\", \
                 \"min(3) < 10\", \"rate(1m) > 1000\", \"change != 0\" or \"nodata(5m)\""
            )
        };
        let text = text.trim();
        let (call, rest) = split_call(text).ok_or_else(|| bad("no function"))?;
        let (name, argument) = call;
        if name == "nodata" {
            if !rest.trim().is_empty() {
                return Err(bad("nodata(...) takes no comparison"));
            }
            let d = duration(argument.ok_or_else(|| bad("nodata needs a duration"))?)
                .map_err(|e| bad(&e))?;
            return Ok(Condition::NoData(d));
        }
        let function = match (name, argument) {
            ("last", None) => Function::Last,
            ("change", None) => Function::Change,
            ("rate", Some(a)) => Function::Rate(duration(a).map_err(|e| bad(&e))?),
            ("avg", Some(a)) => Function::Avg(span(a).map_err(|e| bad(&e))?),
            ("min", Some(a)) => Function::Min(span(a).map_err(|e| bad(&e))?),
            ("max", Some(a)) => Function::Max(span(a).map_err(|e| bad(&e))?),
            ("last" | "change", Some(_)) => return Err(bad(&format!("{name} takes no argument"))),
            ("avg" | "min" | "max" | "rate", None) => {
                return Err(bad(&format!("{name} needs a span, e.g. {name}(5m)")));
            }
            _ => return Err(bad(&format!("unknown function {name:?}"))),
        };
        let rest = rest.trim_start();
        let (comparison, number) = [
            (">=", Comparison::AtLeast),
            ("<=", Comparison::AtMost),
            ("==", Comparison::Equal),
            ("!=", Comparison::NotEqual),
            (">", Comparison::Above),
            ("<", Comparison::Below),
        ]
        .into_iter()
        .find_map(|(symbol, c)| rest.strip_prefix(symbol).map(|n| (c, n)))
        .ok_or_else(|| bad("no comparison"))?;
        let threshold: f64 = number
            .trim()
            .parse()
            .map_err(|_| bad(&format!("{:?} is not a number", number.trim())))?;
        if !threshold.is_finite() {
            return Err(bad("the threshold must be a finite number"));
        }
        Ok(Condition::Compare {
            function,
            comparison,
            threshold,
        })
    }
}

/// `name(argument)` or `name` at the start of `text`, and what follows.
#[allow(clippy::type_complexity)]
fn split_call(text: &str) -> Option<((&str, Option<&str>), &str)> {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let (name, rest) = text.split_at(end);
    if name.is_empty() {
        return None;
    }
    match rest.strip_prefix('(') {
        Some(inner) => {
            let close = inner.find(')')?;
            Some(((name, Some(inner[..close].trim())), &inner[close + 1..]))
        }
        None => Some(((name, None), rest)),
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    let d = text.parse::<HumanDuration>()?.0;
    if d.is_zero() {
        return Err("a span of zero".into());
    }
    Ok(d)
}

/// A duration (`5m`) or a count of values (`3`).
fn span(text: &str) -> Result<Span, String> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<usize>() {
            Ok(n) if (1..=super::MAX_WINDOW).contains(&n) => Ok(Span::Count(n)),
            _ => Err(format!("a count of values from 1 to {}", super::MAX_WINDOW)),
        };
    }
    duration(text).map(Span::Time)
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let span = |s: &Span| match s {
            Span::Time(d) => HumanDuration(*d).to_string(),
            Span::Count(n) => n.to_string(),
        };
        match self {
            Condition::NoData(d) => write!(f, "nodata({})", HumanDuration(*d)),
            Condition::Compare {
                function,
                comparison,
                threshold,
            } => {
                let function = match function {
                    Function::Last => "last".to_owned(),
                    Function::Change => "change".to_owned(),
                    Function::Rate(d) => format!("rate({})", HumanDuration(*d)),
                    Function::Avg(s) => format!("avg({})", span(s)),
                    Function::Min(s) => format!("min({})", span(s)),
                    Function::Max(s) => format!("max({})", span(s)),
                };
                write!(f, "{function} {} {threshold}", comparison.symbol())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Condition {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_function_parses_and_prints_back() {
        for text in [
            "last > 0",
            "avg(5m) > 90",
            "avg(3) >= 2.5",
            "min(3) < 10",
            "max(10m) <= 1000000",
            "rate(1m) > 1000",
            "change != 0",
            "last == 1",
            "nodata(5m)",
        ] {
            let condition = parse(text);
            assert_eq!(
                condition.to_string().parse::<Condition>(),
                Ok(condition),
                "{text}"
            );
        }
        assert_eq!(parse("min(3) < 10").to_string(), "min(3) < 10");
        assert_eq!(parse("avg(5m) > 90").to_string(), "avg(300s) > 90");
        assert_eq!(
            parse("  avg( 5m )>90 "),
            Condition::Compare {
                function: Function::Avg(Span::Time(Duration::from_secs(300))),
                comparison: Comparison::Above,
                threshold: 90.0
            }
        );
    }

    #[test]
    fn mistakes_are_named() {
        for (text, says) in [
            ("avg > 90", "needs a span"),
            ("last(5m) > 1", "takes no argument"),
            ("median(5m) > 1", "unknown function"),
            ("avg(5m) 90", "no comparison"),
            ("avg(5m) > ninety", "is not a number"),
            ("avg(0s) > 1", "zero"),
            ("avg(0) > 1", "count of values"),
            ("nodata(5m) > 1", "no comparison"),
            ("nodata", "needs a duration"),
            ("> 3", "no function"),
            ("avg(5m) > inf", "finite"),
        ] {
            let err = text.parse::<Condition>().unwrap_err();
            assert!(
                err.contains(says) && err.contains("avg(5m) > 90"),
                "{text}: {err}"
            );
        }
    }
}
