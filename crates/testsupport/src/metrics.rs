//! Reading a Prometheus text exposition (`/metrics` of either service) the one way every test
//! reads it: sample by sample, with exact values, so that `x 1` never matches `x 10`.

use std::collections::BTreeMap;

/// One scrape: `name{labels}` -> value, keyed as the exposition writes them.
#[derive(Debug, Clone, Default)]
pub struct Scrape(pub BTreeMap<String, f64>);

impl Scrape {
    /// Parses an exposition; panics, naming the line, on one that is not `key value`.
    pub fn parse(text: &str) -> Self {
        let mut samples = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (key, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("a sample line: {line}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("a number in {line}"));
            samples.insert(key.to_owned(), value);
        }
        Scrape(samples)
    }

    /// The sample `key` (`name` or `name{label="v",...}`), 0 when absent.
    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// The sample `key` if the exposition has it.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.0.get(key).copied()
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Whether any sample's name is `name` (with or without labels).
    pub fn has_metric(&self, name: &str) -> bool {
        self.0
            .keys()
            .any(|k| k == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
    }

    /// Panics unless every `(key, value)` is in the scrape with exactly that value.
    pub fn assert_values(&self, expected: &[(&str, f64)]) {
        for (key, value) in expected {
            assert_eq!(
                self.value(key),
                Some(*value),
                "{key} should be {value}; the scrape: {self:#?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_exactly() {
        let s = Scrape::parse(
            "# HELP x a counter\n# TYPE x counter\nx_total 10\ny_total{outcome=\"accepted\"} 2\n# EOF\n",
        );
        assert_eq!(s.value("x_total"), Some(10.0));
        assert_eq!(s.value("x_tota"), None);
        assert_eq!(s.get(r#"y_total{outcome="accepted"}"#), 2.0);
        assert!(s.has_metric("y_total") && !s.has_metric("y_tot"));
    }
}
