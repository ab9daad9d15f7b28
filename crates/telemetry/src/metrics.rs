//! Prometheus collectors evaluated on every scrape.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// `process_resident_memory_bytes`: the process's resident set (`VmRSS` of
/// `/proc/self/status`), read on every scrape. Absent where `/proc` is not.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessMemory;

impl ProcessMemory {
    /// Adds it to `registry` (at its root: the name is Prometheus's usual one).
    pub fn register(registry: &mut Registry) {
        registry.register_collector(Box::new(ProcessMemory));
    }
}

/// Resident bytes of this process, from `/proc/self/status`.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let factor = match parts.next().map(str::to_ascii_lowercase).as_deref() {
        Some("kb") | None => 1024,
        Some("mb") => 1024 * 1024,
        Some("gb") => 1024 * 1024 * 1024,
        Some("b") => 1,
        Some(_) => return None,
    };
    Some(value * factor)
}

impl Collector for ProcessMemory {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(bytes) = resident_memory_bytes() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

type Probe = Box<dyn Fn() -> Option<i64> + Send + Sync>;

/// A gauge whose value a closure gives on every scrape; nothing is exported while it gives
/// `None` (e.g. a NATS connection gauge in a process that has no NATS connection).
pub struct ProbeGauge {
    name: &'static str,
    help: &'static str,
    probe: Probe,
}

impl fmt::Debug for ProbeGauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeGauge")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ProbeGauge {
    pub fn new(
        name: &'static str,
        help: &'static str,
        probe: impl Fn() -> Option<i64> + Send + Sync + 'static,
    ) -> Self {
        ProbeGauge {
            name,
            help,
            probe: Box::new(probe),
        }
    }
}

impl Collector for ProbeGauge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(value) = (self.probe)() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(value);
        let metric = encoder.encode_descriptor(self.name, self.help, None, gauge.metric_type())?;
        gauge.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  999 kB\nVmRSS:\t   2048 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn collectors_encode_on_scrape() {
        let mut registry = Registry::default();
        ProcessMemory::register(&mut registry);
        let sub = registry.sub_registry_with_prefix("svc");
        sub.register_collector(Box::new(ProbeGauge::new("up", "Up", || Some(1))));
        sub.register_collector(Box::new(ProbeGauge::new("absent", "Absent", || None)));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains("svc_up 1"), "{text}");
        assert!(!text.contains("absent"), "{text}");
        if cfg!(target_os = "linux") {
            let line = text
                .lines()
                .find(|l| l.starts_with("process_resident_memory_bytes "))
                .unwrap_or_else(|| panic!("{text}"));
            let bytes: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(bytes > 1024 * 1024, "{line}");
        }
    }
}
