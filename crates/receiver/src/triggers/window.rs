//! The recent values of one series, as many as its trigger's conditions
//! look at, and the functions of `expr` computed over them. A new value
//! costs at most a pass over the window (bounded by [`super::MAX_WINDOW`]),
//! never a read of stored history.

use super::expr::{Function, Span};
use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug)]
pub struct Window {
    /// (time in ms, value), oldest first.
    values: VecDeque<(u64, f64)>,
    keep_for: u64,
    keep_count: usize,
}

impl Window {
    /// A window keeping every value from the last `keep_for` before the
    /// newest, and at least the newest `keep_count`.
    pub fn new(keep_for: Duration, keep_count: usize) -> Window {
        Window {
            values: VecDeque::new(),
            keep_for: keep_for.as_millis() as u64,
            keep_count: keep_count.clamp(1, super::MAX_WINDOW),
        }
    }

    /// Add a value. One older than the newest is ignored: a resent or
    /// reordered report cannot move a window backwards.
    pub fn push(&mut self, time_ms: u64, value: f64) -> bool {
        if !value.is_finite() || self.newest().is_some_and(|(t, _)| time_ms <= t) {
            return false;
        }
        self.values.push_back((time_ms, value));
        let oldest_kept = time_ms.saturating_sub(self.keep_for);
        while self.values.len() > super::MAX_WINDOW
            || (self.values.len() > self.keep_count
                && self.values.front().is_some_and(|(t, _)| *t < oldest_kept))
        {
            self.values.pop_front();
        }
        true
    }

    pub fn newest(&self) -> Option<(u64, f64)> {
        self.values.back().copied()
    }

    /// The values a span covers, newest first, read in place: judging a
    /// value allocates nothing.
    fn in_span(&self, span: Span) -> impl Iterator<Item = (u64, f64)> + '_ {
        let newest_t = self.newest().map_or(0, |(t, _)| t);
        let (limit, from) = match span {
            Span::Count(n) if self.values.len() < n => (0, 0),
            Span::Count(n) => (n, 0),
            Span::Time(d) => (usize::MAX, newest_t.saturating_sub(d.as_millis() as u64)),
        };
        self.values
            .iter()
            .rev()
            .take(limit)
            .take_while(move |(t, _)| *t >= from)
            .copied()
    }

    /// The function's value now; none when there are not enough values.
    pub fn value(&self, function: Function) -> Option<f64> {
        let (newest_t, newest) = self.newest()?;
        let values = |span: Span| self.in_span(span).map(|(_, v)| v);
        match function {
            Function::Last => Some(newest),
            Function::Change => {
                let previous = self.values.iter().rev().nth(1)?.1;
                Some(newest - previous)
            }
            Function::Avg(span) => {
                let (sum, count) = values(span).fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
                (count > 0).then(|| sum / count as f64)
            }
            Function::Min(span) => values(span).reduce(f64::min),
            Function::Max(span) => values(span).reduce(f64::max),
            Function::Rate(d) => {
                // Newest first: each value is the later of the pair it
                // makes with the next.
                let mut points = self.in_span(Span::Time(d));
                let (mut later, mut first_t, mut pairs) = (points.next()?.1, newest_t, 0);
                let mut increase = 0.0;
                for (t, earlier) in points {
                    // A counter that went down was reset: it counted
                    // `later` since.
                    increase += if later >= earlier {
                        later - earlier
                    } else {
                        later
                    };
                    (later, first_t, pairs) = (earlier, t, pairs + 1);
                }
                if pairs == 0 || newest_t == first_t {
                    return None;
                }
                Some(increase * 1000.0 / (newest_t - first_t) as f64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(points: &[(u64, f64)]) -> Window {
        let mut w = Window::new(Duration::from_secs(60), 3);
        for (t, v) in points {
            w.push(*t, *v);
        }
        w
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn aggregates_over_a_time_span_and_over_a_count() {
        let w = window(&[(0, 10.0), (30_000, 20.0), (60_000, 30.0), (90_000, 60.0)]);
        // The last minute: 30 s, 60 s and 90 s.
        assert_eq!(w.value(Function::Avg(Span::Time(MIN))), Some(110.0 / 3.0));
        assert_eq!(w.value(Function::Min(Span::Time(MIN))), Some(20.0));
        assert_eq!(w.value(Function::Max(Span::Time(MIN))), Some(60.0));
        assert_eq!(w.value(Function::Avg(Span::Count(2))), Some(45.0));
        assert_eq!(w.value(Function::Min(Span::Count(3))), Some(20.0));
        assert_eq!(w.value(Function::Last), Some(60.0));
        assert_eq!(w.value(Function::Change), Some(30.0));
        // Fewer values than a count asks for: no value, not a wrong one.
        assert_eq!(w.value(Function::Min(Span::Count(4))), None);
    }

    #[test]
    fn rate_counts_a_counter_reset_as_a_restart_from_zero() {
        let w = window(&[(0, 100.0), (10_000, 200.0), (20_000, 50.0), (30_000, 150.0)]);
        // +100, reset then +50, +100 over 30 s.
        assert_eq!(w.value(Function::Rate(MIN)), Some(250.0 / 30.0));
        assert_eq!(window(&[(0, 1.0)]).value(Function::Rate(MIN)), None);
    }

    #[test]
    fn old_values_leave_and_late_ones_are_ignored() {
        let mut w = window(&[(0, 1.0), (10_000, 2.0), (20_000, 3.0), (200_000, 4.0)]);
        // Kept: the newest 3 (count), though 0 s and 10 s are past the minute.
        assert_eq!(w.values.len(), 3);
        assert!(!w.push(150_000, 9.0), "older than the newest");
        assert!(!w.push(210_000, f64::NAN));
        assert!(w.push(210_000, 5.0));
        assert_eq!(w.values.len(), 3);
        assert_eq!(w.value(Function::Avg(Span::Time(MIN))), Some(4.5));
    }
}
