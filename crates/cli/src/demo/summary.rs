//! What a demo run reports at the end: a table for people, one JSON object
//! (`--json`) for scripts and the lab test.

use serde::Serialize;
use std::fmt::Write;

use super::display::thousands;

/// One failover of the run.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverRow {
    /// `"kill"` (power cut: daemon killed, link down) or `"crash"` (the
    /// daemon killed, its kernel and link alive).
    pub kind: String,
    /// The primary that was failed.
    pub from: u32,
    /// The node that took over (`null` if none did in time).
    pub to: Option<u32>,
    /// When, in seconds since the load started.
    pub at_s: f64,
    /// Until the lab saw the new primary holding the VIP, in ms.
    pub elected_ms: Option<u64>,
    /// The pause clients saw: the largest gap between two consecutive
    /// replies of one connection spanning the fault, in ms.
    pub pause_ms: Option<u64>,
}

/// The machine-readable summary (`tandem demo --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The lab's name.
    pub name: String,
    pub nodes: usize,
    pub connections: usize,
    /// How long the load ran, in seconds.
    pub duration_s: f64,
    /// Replies received and checked.
    pub operations: u64,
    pub ops_per_s: f64,
    /// Everything that went wrong (lost and duplicated updates included,
    /// and a failover that found no new primary).
    pub errors: u64,
    /// Updates the service forgot (an INCR answered below the expected
    /// value, a GET not returning the value just SET).
    pub lost: u64,
    /// Updates applied twice (an INCR answered above the expected value).
    pub duplicated: u64,
    pub failovers: Vec<FailoverRow>,
    /// Where the latency chart was written (`null` if it could not be).
    pub svg: Option<String>,
    /// Stopped early by SIGINT/SIGTERM.
    pub interrupted: bool,
    /// The lab was left running (`--keep`).
    pub kept: bool,
    /// The first errors, described.
    pub error_samples: Vec<String>,
}

impl Summary {
    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n{} s of load{}, {} nodes, {} connections (INCR per connection, SET/GET of unique values, every reply checked)\n",
            format_secs(self.duration_s),
            if self.interrupted { " (interrupted)" } else { "" },
            self.nodes,
            self.connections
        );
        let rows = [
            (
                "operations",
                format!(
                    "{}  ({}/s)",
                    thousands(self.operations),
                    thousands(self.ops_per_s.round() as u64)
                ),
            ),
            ("errors", thousands(self.errors)),
            ("lost updates", thousands(self.lost)),
            ("duplicated updates", thousands(self.duplicated)),
            ("failovers", self.failovers.len().to_string()),
        ];
        for (label, value) in rows {
            let _ = writeln!(s, "  {label:<20} {value}");
        }
        if !self.failovers.is_empty() {
            let _ = writeln!(
                s,
                "\n  {:<3} {:>7}  {:<6} {:<9} {:>14}  {:>13}",
                "#", "at", "fault", "primary", "new primary in", "client pause"
            );
            for (i, f) in self.failovers.iter().enumerate() {
                let to =
                    f.to.map(|t| t.to_string())
                        .unwrap_or_else(|| "?".to_string());
                let ms = |v: Option<u64>| {
                    v.map(|v| format!("{} ms", thousands(v)))
                        .unwrap_or_else(|| "-".to_string())
                };
                let _ = writeln!(
                    s,
                    "  {:<3} {:>6}s  {:<6} {:<9} {:>14}  {:>13}",
                    i + 1,
                    format!("{:.1}", f.at_s),
                    f.kind,
                    format!("{} -> {to}", f.from),
                    ms(f.elected_ms),
                    ms(f.pause_ms)
                );
            }
            if let Some(max) = self.failovers.iter().filter_map(|f| f.pause_ms).max() {
                let _ = writeln!(s, "\n  largest client-visible pause: {} ms", thousands(max));
            }
        }
        if !self.error_samples.is_empty() {
            let _ = writeln!(s, "\n  first errors:");
            for e in &self.error_samples {
                let _ = writeln!(s, "    {e}");
            }
        }
        match &self.svg {
            Some(path) => {
                let _ = writeln!(s, "\nlatency chart: {path}");
            }
            None => {
                let _ = writeln!(s, "\nlatency chart: not written");
            }
        }
        s
    }

    /// The run kept tandem's promise: no error of any kind.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.lost == 0 && self.duplicated == 0
    }
}

fn format_secs(s: f64) -> String {
    if (s - s.round()).abs() < 0.05 {
        format!("{}", s.round())
    } else {
        format!("{s:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_and_the_json_carry_the_counts() {
        let summary = Summary {
            name: "demo1".into(),
            nodes: 3,
            connections: 32,
            duration_s: 45.0,
            operations: 213_442,
            ops_per_s: 4743.2,
            errors: 0,
            lost: 0,
            duplicated: 0,
            failovers: vec![FailoverRow {
                kind: "kill".into(),
                from: 1,
                to: Some(2),
                at_s: 8.0,
                elected_ms: Some(820),
                pause_ms: Some(845),
            }],
            svg: Some("/tmp/x.svg".into()),
            interrupted: false,
            kept: false,
            error_samples: vec![],
        };
        let table = summary.table();
        assert!(table.contains("213,442"), "{table}");
        assert!(table.contains("1 -> 2"), "{table}");
        assert!(table.contains("845 ms"), "{table}");
        let json: serde_json::Value = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["failovers"][0]["pause_ms"], 845);
        assert_eq!(json["lost"], 0);
        assert!(summary.clean());
    }
}
