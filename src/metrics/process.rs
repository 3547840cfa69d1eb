//! The standard `process_*` metrics (prometheus-client has no process collector): resident and
//! virtual memory, CPU seconds, threads, open and maximum file descriptors, start time, read
//! from `/proc/self` at scrape time. Not on the data path; the admin listener renders on a
//! blocking thread because this reads files.

use std::fs;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Unit,
};

/// See the module docs.
#[derive(Debug, Default)]
pub struct ProcessCollector {
    page_size: u64,
    ticks_per_second: u64,
}

impl ProcessCollector {
    pub fn new() -> Self {
        // Linux on the architectures we ship: 4 KiB pages, USER_HZ 100. Reading sysconf would
        // need unsafe or another crate for two constants the kernel ABI fixes.
        ProcessCollector {
            page_size: 4096,
            ticks_per_second: 100,
        }
    }
}

/// What `/proc/self/stat` and friends say, or `None` off Linux.
#[derive(Debug, Default, PartialEq)]
struct Snapshot {
    cpu_seconds: f64,
    threads: i64,
    virtual_bytes: i64,
    resident_bytes: i64,
    start_time_seconds: f64,
    open_fds: i64,
    max_fds: i64,
}

impl ProcessCollector {
    fn snapshot(&self) -> Option<Snapshot> {
        let stat = fs::read_to_string("/proc/self/stat").ok()?;
        let mut s = parse_stat(&stat, self.page_size, self.ticks_per_second)?;
        let boot = fs::read_to_string("/proc/stat").ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        // starttime is in ticks since boot.
        s.start_time_seconds = boot.map_or(0.0, |b| b + s.start_time_seconds);
        s.open_fds = fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
        s.max_fds = fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        Some(s)
    }
}

/// Parses `/proc/self/stat`. Fields after the parenthesised command name, which may itself hold
/// spaces and parentheses, are counted from its closing `)`.
fn parse_stat(stat: &str, page_size: u64, ticks: u64) -> Option<Snapshot> {
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // f[0] is field 3 (state); utime is field 14, stime 15, num_threads 20, starttime 22,
    // vsize 23, rss 24.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = ticks as f64;
    Some(Snapshot {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        threads: field(20)? as i64,
        start_time_seconds: field(22)? as f64 / ticks,
        virtual_bytes: field(23)? as i64,
        resident_bytes: (field(24)? * page_size) as i64,
        open_fds: 0,
        max_fds: 0,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.snapshot() else {
            return Ok(());
        };
        let seconds = Unit::Seconds;
        let bytes = Unit::Bytes;
        let counter = |encoder: &mut DescriptorEncoder, name, help, unit, v: f64| {
            let mut m = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
            m.encode_counter::<NoLabelSet, _, u64>(&v, None)
        };
        counter(
            &mut encoder,
            "process_cpu",
            "Total user and system CPU time spent",
            Some(&seconds),
            s.cpu_seconds,
        )?;
        let gauges: [(&str, &str, Option<&Unit>, f64); 6] = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(&bytes),
                s.resident_bytes as f64,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(&bytes),
                s.virtual_bytes as f64,
            ),
            (
                "process_start_time",
                "Start time since the Unix epoch",
                Some(&seconds),
                s.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                s.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum open file descriptors",
                None,
                s.max_fds as f64,
            ),
            ("process_threads", "OS threads", None, s.threads as f64),
        ];
        for (name, help, unit, v) in gauges {
            let mut m = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
            m.encode_gauge(&v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as the kernel allows.
        let stat = "4242 (trace mesh) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 7 0 12345 104857600 2560 18446744073709551615";
        let s = parse_stat(stat, 4096, 100).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_time_seconds, 123.45);
        assert_eq!(s.virtual_bytes, 104_857_600);
        assert_eq!(s.resident_bytes, 2560 * 4096);
    }

    #[test]
    fn this_process_reports_memory_and_fds() {
        let s = ProcessCollector::new().snapshot().expect("linux /proc");
        assert!(
            s.resident_bytes > 0 && s.open_fds > 0 && s.max_fds > 0,
            "{s:?}"
        );
        assert!(s.start_time_seconds > 1.6e9, "{s:?}");
    }
}
