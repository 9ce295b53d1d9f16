//! The figures and how they are written into BENCHMARKS.md.

use std::fmt::Write as _;

use crate::machine::Machine;
use crate::stats::Samples;

/// What a figure counts.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Seconds (printed in ns, µs, ms or s).
    Seconds,
    /// Bytes (printed in KiB or MiB).
    Bytes,
    /// Bytes per second (printed in MB/s).
    BytesPerSecond,
    /// A count (printed with one decimal).
    Count,
}

/// The target for a figure.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Our median must be at most this (in the figure's unit).
    AtMost(f64),
    /// Our median over the comparison's median must be at most this.
    RatioAtMost(f64),
    /// No target (a physical limit, or context).
    None,
}

/// One figure: our measurement, what it is compared with, and the target.
#[derive(Debug, Clone)]
pub struct Metric {
    /// The name for it.
    pub title: String,
    /// What exactly was timed.
    pub ours_label: String,
    /// The unit of both samples.
    pub unit: Unit,
    /// Our measurements (empty: not measured, see `notes`).
    pub ours: Samples,
    /// The alternative, measured in the same run.
    pub comparison: Option<(String, Samples)>,
    /// The target.
    pub target: Target,
    /// Load average when the figure was taken.
    pub load: String,
    /// Method details, limits and caveats.
    pub notes: Vec<String>,
}

impl Metric {
    /// A figure with no samples yet, taken under the current load.
    pub fn new(title: &str, ours_label: &str, unit: Unit, target: Target) -> Metric {
        Metric {
            title: title.into(),
            ours_label: ours_label.into(),
            unit,
            ours: Samples::new(),
            comparison: None,
            target,
            load: crate::machine::load_average(),
            notes: Vec::new(),
        }
    }

    /// Our median over the comparison's.
    pub fn ratio(&self) -> Option<f64> {
        let (_, c) = self.comparison.as_ref()?;
        (self.ours.len() > 0 && c.len() > 0).then(|| self.ours.median() / c.median())
    }

    /// "met", "missed", "not measured" or "—".
    pub fn verdict(&self) -> &'static str {
        if self.ours.len() == 0 {
            return "not measured";
        }
        let met = match self.target {
            Target::AtMost(limit) => self.ours.median() <= limit,
            Target::RatioAtMost(limit) => match self.ratio() {
                Some(r) => r <= limit,
                None => return "not measured",
            },
            Target::None => return "—",
        };
        if met { "**met**" } else { "**missed**" }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::AtMost(v) => format!("≤ {}", fmt(self.unit, v)),
            Target::RatioAtMost(r) => format!("≤ {r:.2}×"),
            Target::None => "—".into(),
        }
    }
}

/// `v` in `unit`, human-readable.
pub fn fmt(unit: Unit, v: f64) -> String {
    if v.is_nan() {
        return "—".into();
    }
    match unit {
        Unit::Seconds if v.abs() < 1e-6 => format!("{:.0} ns", v * 1e9),
        Unit::Seconds if v.abs() < 1e-3 => format!("{:.2} µs", v * 1e6),
        Unit::Seconds if v.abs() < 1.0 => format!("{:.2} ms", v * 1e3),
        Unit::Seconds => format!("{v:.2} s"),
        Unit::Bytes if v < 1024.0 * 1024.0 => format!("{:.0} KiB", v / 1024.0),
        Unit::Bytes => format!("{:.2} MiB", v / (1024.0 * 1024.0)),
        Unit::BytesPerSecond => format!("{:.0} MB/s", v / 1e6),
        Unit::Count => format!("{v:.1}"),
    }
}

fn ratio_text(r: f64) -> String {
    if r < 0.01 {
        format!("{r:.4}× (1/{:.0})", 1.0 / r)
    } else {
        format!("{r:.2}×")
    }
}

/// `min / median / max` of `s` in `unit` ("—" when empty).
pub fn triple(unit: Unit, s: &Samples) -> String {
    if s.len() == 0 {
        return "—".into();
    }
    format!(
        "{} / {} / {}",
        fmt(unit, s.min()),
        fmt(unit, s.median()),
        fmt(unit, s.max())
    )
}

/// Everything BENCHMARKS.md says.
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// Load average when the run started.
    pub load_at_start: String,
    /// The command line that produced it.
    pub command: String,
    /// Whether `--quick` (smaller data) was given.
    pub quick: bool,
    /// Runs per figure.
    pub runs: usize,
    /// Wall time of the whole run, in seconds.
    pub total_seconds: f64,
    /// The figures, in the order.
    pub metrics: Vec<Metric>,
    /// Physical limits measured on the same machine.
    pub limits: Vec<Metric>,
    /// Benchmarks that were not run, and why.
    pub skipped: Vec<(String, String)>,
}

impl Report {
    /// The Markdown text.
    pub fn markdown(&self, method: &str) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(md, "# Benchmarks\n");
        let _ = writeln!(
            md,
            "Written by `{}` (the `upshift-bench` crate, `bench/`); do not edit by hand. \
             Regenerate with `cargo run --release -p upshift-bench` (`--quick` for smaller data, \
             `--only NAME` for one group: `sandbox`, `plan`, `snapshot`, `pg`, `fleet`, `agents`, `status`, `audit`, `limits`, \
             written to `target/BENCHMARKS-only.md` so this file is not replaced by a partial run).\n",
            self.command
        );
        let _ = writeln!(md, "## Machine\n");
        let _ = writeln!(md, "| | |\n|---|---|");
        let _ = writeln!(md, "| CPU | {} |", m.cpu);
        let _ = writeln!(md, "| cores | {} (logical) |", m.cores);
        let _ = writeln!(
            md,
            "| RAM | {:.1} GiB |",
            m.ram as f64 / (1u64 << 30) as f64
        );
        let _ = writeln!(md, "| disk (data directory) | {} |", m.disk);
        let _ = writeln!(md, "| kernel | {} |", m.kernel);
        let _ = writeln!(
            md,
            "| load average at start (1, 5, 15 min) | {} |",
            self.load_at_start
        );
        let _ = writeln!(
            md,
            "| data size | {} |",
            if self.quick {
                "`--quick`: scaled down (see each figure)"
            } else {
                "full"
            }
        );
        let _ = writeln!(md, "| runs per figure | {} |", self.runs);
        let _ = writeln!(md, "| whole run | {:.0} s |", self.total_seconds);
        let _ = writeln!(md, "\n## Method\n\n{method}\n");
        let _ = writeln!(md, "## Results\n");
        let _ = writeln!(
            md,
            "Each cell is min / median / max over the runs; the ratio is our median over the \
             comparison's median. The load average is the one when that figure was taken.\n"
        );
        let _ = writeln!(
            md,
            "| metric | ours (min / median / max) | compared with | theirs (min / median / max) | ratio | target | result | load avg |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for x in &self.metrics {
            let (cmp_label, cmp) = match &x.comparison {
                Some((l, s)) => (l.clone(), triple(x.unit, s)),
                None => ("—".into(), "—".into()),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                x.title,
                triple(x.unit, &x.ours),
                cmp_label,
                cmp,
                x.ratio().map_or("—".into(), ratio_text),
                x.target_text(),
                x.verdict(),
                x.load
            );
        }
        for (name, why) in &self.skipped {
            let _ = writeln!(
                md,
                "| {name} | not measured: {why} | | | | | not measured | |"
            );
        }
        if !self.limits.is_empty() {
            let _ = writeln!(md, "\n## Physical limits, measured on the same machine\n");
            let _ = writeln!(
                md,
                "| what | min / median / max | load avg |\n|---|---|---|"
            );
            for x in &self.limits {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} |",
                    x.title,
                    triple(x.unit, &x.ours),
                    x.load
                );
            }
            for x in &self.limits {
                for n in &x.notes {
                    let _ = writeln!(md, "\n- {}: {n}", x.title);
                }
            }
        }
        let _ = writeln!(md, "\n## Each figure\n");
        for x in self.metrics.iter() {
            let _ = writeln!(md, "### {}\n", x.title);
            let _ = writeln!(md, "- ours: {}", x.ours_label);
            if let Some((l, _)) = &x.comparison {
                let _ = writeln!(md, "- compared with: {l}");
            }
            for n in &x.notes {
                let _ = writeln!(md, "- {n}");
            }
            let _ = writeln!(md);
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_units() {
        let mut m = Metric::new("x", "y", Unit::Seconds, Target::RatioAtMost(0.67));
        assert_eq!(m.verdict(), "not measured");
        m.ours.push(1.0);
        let mut c = Samples::new();
        c.push(2.0);
        m.comparison = Some(("z".into(), c));
        assert_eq!(m.ratio(), Some(0.5));
        assert_eq!(m.verdict(), "**met**");
        assert_eq!(fmt(Unit::Seconds, 15e-6), "15.00 µs");
        assert_eq!(fmt(Unit::Bytes, 3.0 * 1024.0 * 1024.0), "3.00 MiB");
    }
}
