//! Reading a Prometheus text exposition (a stage's `/metrics`): what the benchmarks and the
//! tests read a running process's progress from.

use std::collections::BTreeMap;

/// Every sample of a scrape, by its name with labels (`name{a="b"}`).
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of a metric's samples over all label sets.
pub fn metric_sum(scrape: &str, name: &str) -> f64 {
    let labelled = format!("{name}{{");
    samples(scrape)
        .iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&labelled))
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_every_label_set_of_one_name_only() {
        let text = "# HELP x_total x\nx_total{p=\"0\"} 2\nx_total{p=\"1\"} 3.5\nx_total_other 9\nx_total 1\n";
        assert_eq!(super::metric_sum(text, "x_total"), 6.5);
        assert_eq!(super::samples(text).len(), 4);
    }
}
