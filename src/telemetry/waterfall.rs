//! A trace laid out as a waterfall: its spans in tree order (each after its parent, siblings by
//! start), with depth, offset from the trace's start, self time (the part of a span no child
//! covers), and the critical path (the chain of spans that sets the trace's total duration).
//! `/debug/traces` draws it as HTML and JSON, the demo in the terminal.
//!
//! The critical path starts at the root that ends last and walks back from each span's end: the
//! child that ends last (before the walk's cursor) is on the path, the cursor moves to that
//! child's start, and the next child that ends before it is on the path too, and so on, each
//! chosen child recursively. A span whose parent is not in the trace (it is in another process)
//! is a root here.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

/// What the layout needs of a span.
pub trait Timed {
    fn id(&self) -> [u8; 8];
    fn parent(&self) -> Option<[u8; 8]>;
    fn start(&self) -> SystemTime;
    fn duration(&self) -> Duration;
}

impl Timed for super::SpanRecord {
    fn id(&self) -> [u8; 8] {
        self.context.span_id.0
    }
    fn parent(&self) -> Option<[u8; 8]> {
        self.parent.map(|p| p.0)
    }
    fn start(&self) -> SystemTime {
        self.start
    }
    fn duration(&self) -> Duration {
        self.duration
    }
}

/// One row: the span at `span` in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub span: usize,
    pub depth: usize,
    pub offset: Duration,
    pub duration: Duration,
    pub self_time: Duration,
    pub critical: bool,
    /// Its parent is not in this trace (another process's span), or it has none.
    pub root: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waterfall {
    pub start: SystemTime,
    pub total: Duration,
    pub rows: Vec<Row>,
}

/// Lays `spans` out (see the module docs).
pub fn layout<T: Timed>(spans: &[T]) -> Waterfall {
    let start = spans
        .iter()
        .map(Timed::start)
        .min()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let at = |t: SystemTime| t.duration_since(start).unwrap_or_default();
    let end_of = |i: usize| at(spans[i].start()) + spans[i].duration();
    let total = (0..spans.len()).map(end_of).max().unwrap_or_default();

    let index: HashMap<[u8; 8], usize> =
        spans.iter().enumerate().map(|(i, s)| (s.id(), i)).collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s.parent().and_then(|p| index.get(&p)).filter(|&&p| p != i) {
            Some(&p) => children[p].push(i),
            None => roots.push(i),
        }
    }
    let by_start = |v: &mut Vec<usize>| v.sort_by_key(|&i| (spans[i].start(), i));
    by_start(&mut roots);
    for c in children.iter_mut() {
        by_start(c);
    }

    // The critical path, from the root that ends last.
    let times = critical_inputs(spans, start);
    let mut critical = vec![false; spans.len()];
    if let Some(&last) = roots
        .iter()
        .max_by_key(|&&i| (end_of(i), std::cmp::Reverse(i)))
    {
        mark_critical(last, &children, &times, &mut critical);
    }

    let mut is_root = vec![false; spans.len()];
    for &r in &roots {
        is_root[r] = true;
    }
    let mut rows = Vec::with_capacity(spans.len());
    let mut seen = vec![false; spans.len()];
    // Roots first; then any span no root reaches (a cycle of parents in bad input), as a root.
    let mut pending: Vec<usize> = roots.clone();
    pending.extend((0..spans.len()).filter(|&i| !is_root[i]));
    for start_at in pending {
        if seen[start_at] {
            continue;
        }
        let mut stack = vec![(start_at, 0)];
        while let Some((i, depth)) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            let (s, e) = times[i];
            let covered = union(children[i].iter().map(|&c| {
                let (cs, ce) = times[c];
                (cs.clamp(s, e), ce.clamp(s, e))
            }));
            rows.push(Row {
                span: i,
                depth,
                offset: s,
                duration: spans[i].duration(),
                self_time: spans[i].duration().saturating_sub(covered),
                critical: critical[i],
                root: depth == 0,
            });
            for &c in children[i].iter().rev() {
                stack.push((c, depth + 1));
            }
        }
    }
    Waterfall { start, total, rows }
}

/// Start and end of each span, relative to the trace's start.
fn critical_inputs<T: Timed>(spans: &[T], start: SystemTime) -> Vec<(Duration, Duration)> {
    spans
        .iter()
        .map(|s| {
            let b = s.start().duration_since(start).unwrap_or_default();
            (b, b + s.duration())
        })
        .collect()
}

/// Marks the critical path under `root` (see the module docs), without recursion: a chain of
/// spans as deep as the store is long must not exhaust the stack.
fn mark_critical(
    root: usize,
    children: &[Vec<usize>],
    times: &[(Duration, Duration)],
    critical: &mut [bool],
) {
    let mut todo = vec![root];
    while let Some(i) = todo.pop() {
        if std::mem::replace(&mut critical[i], true) {
            continue;
        }
        let (start, end) = times[i];
        let mut by_end: Vec<usize> = children[i].clone();
        by_end.sort_by_key(|&c| std::cmp::Reverse(times[c].1));
        let mut cursor = end;
        for c in by_end {
            let (cs, ce) = times[c];
            if ce.min(end) <= cursor && cs < cursor && ce > start {
                todo.push(c);
                cursor = cs.max(start);
            }
        }
    }
}

/// The total length of the union of intervals.
fn union(intervals: impl Iterator<Item = (Duration, Duration)>) -> Duration {
    let mut v: Vec<(Duration, Duration)> = intervals.filter(|(a, b)| b > a).collect();
    v.sort();
    let mut total = Duration::ZERO;
    let mut current: Option<(Duration, Duration)> = None;
    for (a, b) in v {
        current = match current {
            Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += cb - ca;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((a, b)) = current {
        total += b - a;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S(u8, Option<u8>, u64, u64);

    impl Timed for S {
        fn id(&self) -> [u8; 8] {
            [self.0; 8]
        }
        fn parent(&self) -> Option<[u8; 8]> {
            self.1.map(|p| [p; 8])
        }
        fn start(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_millis(self.2)
        }
        fn duration(&self) -> Duration {
            Duration::from_millis(self.3)
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The spans on the critical path, in row order.
    fn critical(w: &Waterfall) -> Vec<usize> {
        w.rows
            .iter()
            .filter(|r| r.critical)
            .map(|r| r.span)
            .collect()
    }

    #[test]
    fn tree_order_depths_self_time_and_the_critical_path() {
        // server 0..100; a 10..30 and b 20..90 overlap; c 40..80 under b; d (elsewhere's child)
        let spans = [
            S(2, Some(1), 1010, 20), // a
            S(1, None, 1000, 100),   // server
            S(3, Some(1), 1020, 70), // b
            S(4, Some(3), 1040, 40), // c
            S(9, Some(7), 1095, 2),  // parent not here: a root
        ];
        let w = layout(&spans);
        assert_eq!(w.total, ms(100));
        let order: Vec<(usize, usize)> = w.rows.iter().map(|r| (r.span, r.depth)).collect();
        assert_eq!(order, [(1, 0), (0, 1), (2, 1), (3, 2), (4, 0)]);
        let row = |i: usize| w.rows.iter().find(|r| r.span == i).unwrap();
        // The server: 100 - union(10..30, 20..90) = 100 - 80.
        assert_eq!(row(1).self_time, ms(20));
        assert_eq!(row(2).self_time, ms(30));
        assert_eq!(row(3).self_time, ms(40));
        assert_eq!(row(1).offset, Duration::ZERO);
        assert_eq!(row(3).offset, ms(40));
        // Critical: server → b (ends last) → c; a ends at 30, after b's start (20): not on it.
        assert_eq!(critical(&w), [1, 2, 3]);
        assert!(row(4).root && row(1).root && !row(0).root);
    }

    #[test]
    fn sequential_children_are_all_on_the_critical_path() {
        let spans = [
            S(1, None, 0, 100),
            S(2, Some(1), 5, 30),
            S(3, Some(1), 40, 50),
            S(4, Some(1), 10, 5), // inside 2's time, not on the path
        ];
        let w = layout(&spans);
        assert_eq!(critical(&w), [0, 1, 2]);
        assert_eq!(w.rows[0].self_time, ms(20));
    }

    #[test]
    fn empty_cyclic_and_deep_input_lay_out_every_span_once() {
        let w = layout::<S>(&[]);
        assert!(w.rows.is_empty());
        // A cycle of parents: no root reaches them, and both are still shown, once each.
        let w = layout(&[S(1, Some(2), 0, 10), S(2, Some(1), 0, 10)]);
        let mut shown: Vec<usize> = w.rows.iter().map(|r| r.span).collect();
        shown.sort();
        assert_eq!(shown, [0, 1]);
        // A chain 100,000 deep: no recursion to overflow.
        struct Deep(u32);
        impl Timed for Deep {
            fn id(&self) -> [u8; 8] {
                let mut b = [0; 8];
                b[..4].copy_from_slice(&self.0.to_be_bytes());
                b
            }
            fn parent(&self) -> Option<[u8; 8]> {
                self.0.checked_sub(1).map(|p| Deep(p).id())
            }
            fn start(&self) -> SystemTime {
                SystemTime::UNIX_EPOCH + Duration::from_micros(u64::from(self.0))
            }
            fn duration(&self) -> Duration {
                Duration::from_secs(1) - Duration::from_micros(2 * u64::from(self.0))
            }
        }
        let chain: Vec<Deep> = (0..100_000).map(Deep).collect();
        let w = layout(&chain);
        assert_eq!(w.rows.len(), 100_000);
        assert!(w.rows.iter().all(|r| r.critical));
        assert_eq!(w.rows[99_999].depth, 99_999);
    }
}
