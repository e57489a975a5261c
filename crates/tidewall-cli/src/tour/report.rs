//! The tour's results: readable tables, or JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// One scenario's measured outcome.
#[derive(Serialize, Debug)]
pub(crate) struct Section {
    pub(crate) title: &'static str,
    /// The Tidewall API the scenario exercises.
    pub(crate) api: &'static str,
    pub(crate) metrics: Vec<Metric>,
    pub(crate) checks: Vec<Check>,
}

#[derive(Serialize, Debug)]
pub(crate) struct Metric {
    pub(crate) name: String,
    pub(crate) value: String,
}

/// An invariant the scenario verified (never a timing threshold that a slow machine could miss).
#[derive(Serialize, Debug)]
pub(crate) struct Check {
    pub(crate) what: String,
    pub(crate) passed: bool,
}

impl Section {
    pub(crate) fn new(title: &'static str, api: &'static str) -> Self {
        Self {
            title,
            api,
            metrics: Vec::new(),
            checks: Vec::new(),
        }
    }

    pub(crate) fn metric(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        self.metrics.push(Metric {
            name: name.to_owned(),
            value: value.to_string(),
        });
        self
    }

    pub(crate) fn check(&mut self, what: &str, passed: bool) -> &mut Self {
        self.checks.push(Check {
            what: what.to_owned(),
            passed,
        });
        self
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct Report {
    pub(crate) runtime: String,
    pub(crate) quick: bool,
    #[serde(serialize_with = "millis")]
    pub(crate) total: Duration,
    pub(crate) sections: Vec<Section>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

impl Report {
    pub(crate) fn failed_checks(&self) -> Vec<String> {
        self.sections
            .iter()
            .flat_map(|s| {
                s.checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(move |c| format!("{}: {}", s.title, c.what))
            })
            .collect()
    }

    #[allow(
        clippy::print_stdout,
        reason = "printing the report is the command's job"
    )]
    pub(crate) fn print_json(&self) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(self)?);
        Ok(())
    }

    #[allow(
        clippy::print_stdout,
        reason = "printing the report is the command's job"
    )]
    pub(crate) fn print_tables(&self) {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Tidewall tour on {}{}",
            self.runtime,
            if self.quick { " (quick)" } else { "" }
        );
        let _ = writeln!(
            out,
            "service: embedded hyper HTTP/1.1 server on 127.0.0.1, its own tokio thread\n"
        );
        for section in &self.sections {
            let _ = writeln!(out, "== {}  [{}]", section.title, section.api);
            let width = section
                .metrics
                .iter()
                .map(|m| m.name.len())
                .max()
                .unwrap_or(0);
            for metric in &section.metrics {
                let _ = writeln!(out, "   {:<width$}  {}", metric.name, metric.value);
            }
            for check in &section.checks {
                let _ = writeln!(
                    out,
                    "   [{}] {}",
                    if check.passed { "ok" } else { "FAILED" },
                    check.what
                );
            }
            out.push('\n');
        }
        let failed = self.failed_checks().len();
        let checks: usize = self.sections.iter().map(|s| s.checks.len()).sum();
        let _ = writeln!(
            out,
            "{} of {checks} checks passed in {:.2} s",
            checks - failed,
            self.total.as_secs_f64()
        );
        print!("{out}");
    }
}

/// Milliseconds with one decimal, for tables.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
