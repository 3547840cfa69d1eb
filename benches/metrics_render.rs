//! `/metrics` with 1,000 live RED series: exposition size and render time, OpenMetrics (with an
//! exemplar on every series) and classic text. Run: `cargo bench --bench metrics_render`.
//! Results go in BENCHMARKS.md.

use std::time::{Duration, Instant};

use tracemesh::{
    config::routes::Route,
    context::{SpanId, TraceId},
    metrics::{
        red::{RedLabels, TraceExemplar},
        Direction, Metrics,
    },
};

fn main() {
    let metrics = Metrics::new(true);
    let red = metrics.red.as_ref().expect("RED on");
    // 250 routes x 2 directions x 2 status codes = 1,000 series, each observed 10 times.
    let routes: Vec<&'static str> = (0..250)
        .map(|i| &*Box::leak(format!("/r{i}/{{id}}").into_boxed_str()))
        .collect();
    let mut series = 0;
    for route in &routes {
        for direction in [Direction::Inbound, Direction::Outbound] {
            for status in [200u16, 503] {
                let labels = RedLabels {
                    direction,
                    method: "GET",
                    status_code: status,
                    route: Some(Route::Matched(route)),
                    error_type: None,
                    grpc: None,
                };
                for i in 0..10u64 {
                    let ex = TraceExemplar {
                        trace_id: TraceId::random(),
                        span_id: SpanId::random(),
                    };
                    red.observe(
                        &labels,
                        Duration::from_micros(300 + i * 700),
                        Some((ex, std::time::SystemTime::now())),
                    );
                }
                series += 1;
            }
        }
    }

    let time = |f: &dyn Fn() -> usize| {
        let runs = 200;
        let mut best = Duration::MAX;
        let mut size = 0;
        for _ in 0..runs {
            let t = Instant::now();
            size = f();
            best = best.min(t.elapsed());
        }
        (size, best)
    };
    let (om_size, om_time) = time(&|| metrics.render(Some("application/openmetrics-text")).1.len());
    let (txt_size, txt_time) = time(&|| metrics.render(None).1.len());
    println!("series: {series} RED series (x2 families: counter + 17-bucket histogram)");
    println!(
        "openmetrics: {:.1} KiB, best of 200 renders {:.2} ms",
        om_size as f64 / 1024.0,
        om_time.as_secs_f64() * 1e3
    );
    println!(
        "classic text: {:.1} KiB, best of 200 renders {:.2} ms",
        txt_size as f64 / 1024.0,
        txt_time.as_secs_f64() * 1e3
    );
}
