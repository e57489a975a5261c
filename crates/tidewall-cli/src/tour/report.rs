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

/// An invariant the scenario verified. Some bound a time: each such bound sits far enough from
/// what a correct pattern needs that a loaded 2-vCPU machine should not miss it, and close
/// enough to what a broken one would take that it still fails it; the measured figure is
/// printed beside it.
#[derive(Serialize, Debug)]
pub(crate) struct Check {
    pub(crate) what: String,
    pub(crate) status: Status,
    /// `true` only for [`Status::Ok`], for readers of the JSON that look at this field alone.
    pub(crate) passed: bool,
    /// Why a check could not be measured here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

/// A check's outcome.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Ok,
    Failed,
    /// This platform lacks what the measurement needs (Linux's `/proc`, Unix signals): the
    /// check is neither passed nor failed, and it is shown as such.
    NotMeasurable,
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
            status: if passed { Status::Ok } else { Status::Failed },
            passed,
            reason: None,
        });
        self
    }

    /// A check this platform cannot measure, and why: shown as such, never as passed.
    pub(crate) fn not_measurable(&mut self, what: &str, why: &str) -> &mut Self {
        self.checks.push(Check {
            what: what.to_owned(),
            status: Status::NotMeasurable,
            passed: false,
            reason: Some(why.to_owned()),
        });
        self
    }
}

#[derive(Serialize, Debug)]
pub(crate) struct Report {
    pub(crate) runtime: String,
    /// Where the Redis sections ran, when they did: tidewall-redis runs on tokio only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) redis_runtime: Option<String>,
    pub(crate) quick: bool,
    #[serde(serialize_with = "millis")]
    pub(crate) total: Duration,
    pub(crate) sections: Vec<Section>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

impl Report {
    /// "section: check" for every check with `status`.
    pub(crate) fn checks_with(&self, status: Status) -> Vec<String> {
        self.sections
            .iter()
            .flat_map(|s| {
                s.checks
                    .iter()
                    .filter(move |c| c.status == status)
                    .map(move |c| match &c.reason {
                        Some(why) => format!("{}: {} ({why})", s.title, c.what),
                        None => format!("{}: {}", s.title, c.what),
                    })
            })
            .collect()
    }

    pub(crate) fn failed_checks(&self) -> Vec<String> {
        self.checks_with(Status::Failed)
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
            "service: embedded hyper HTTP/1.1 server on 127.0.0.1, its own tokio thread"
        );
        if let Some(redis) = &self.redis_runtime {
            let _ = writeln!(out, "Redis sections: {redis}");
        }
        out.push('\n');
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
                let _ = match (check.status, &check.reason) {
                    (Status::Ok, _) => writeln!(out, "   [ok] {}", check.what),
                    (Status::Failed, _) => writeln!(out, "   [FAILED] {}", check.what),
                    (Status::NotMeasurable, why) => writeln!(
                        out,
                        "   [not measurable here] {}: {}",
                        check.what,
                        why.as_deref().unwrap_or("")
                    ),
                };
            }
            out.push('\n');
        }
        out.push_str(&self.summary());
        out.push('\n');
        print!("{out}");
    }

    /// "25 of 26 checks passed, 1 not measurable here, 0 failed in 12.34 s".
    pub(crate) fn summary(&self) -> String {
        let checks: usize = self.sections.iter().map(|s| s.checks.len()).sum();
        let passed = self.checks_with(Status::Ok).len();
        let unmeasured = self.checks_with(Status::NotMeasurable).len();
        let failed = self.failed_checks().len();
        let mut line = format!("{passed} of {checks} checks passed");
        if unmeasured > 0 {
            let _ = write!(line, ", {unmeasured} not measurable here");
        }
        let _ = write!(
            line,
            ", {failed} failed in {:.2} s",
            self.total.as_secs_f64()
        );
        line
    }
}

/// Milliseconds with one decimal, for tables.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Report, Section, Status};

    fn report() -> Report {
        let mut s = Section::new("streams", "api");
        s.check("counted", true)
            .check("ordered", false)
            .not_measurable("peak RSS bounded", "no /proc/self/clear_refs");
        Report {
            runtime: "tokio".into(),
            redis_runtime: None,
            quick: true,
            total: Duration::from_secs(2),
            sections: vec![s],
        }
    }

    /// A check this platform cannot measure is neither a pass nor a failure, and says so.
    #[test]
    fn an_unmeasurable_check_is_neither_passed_nor_failed() {
        let report = report();
        assert_eq!(report.failed_checks(), ["streams: ordered"]);
        assert_eq!(
            report.checks_with(Status::NotMeasurable),
            ["streams: peak RSS bounded (no /proc/self/clear_refs)"]
        );
        assert_eq!(
            report.summary(),
            "1 of 3 checks passed, 1 not measurable here, 1 failed in 2.00 s"
        );
        let json = serde_json::to_value(&report).unwrap();
        let checks = &json["sections"][0]["checks"];
        assert_eq!(checks[0]["status"], "ok");
        assert_eq!(checks[0]["passed"], true);
        assert_eq!(checks[1]["status"], "failed");
        assert_eq!(checks[2]["status"], "not_measurable");
        assert_eq!(checks[2]["passed"], false, "never reported as passed");
        assert_eq!(checks[2]["reason"], "no /proc/self/clear_refs");
        assert!(json.get("redis_runtime").is_none());
    }
}
