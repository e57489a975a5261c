//! Fault injection's counter: `tidewall_chaos_injections_total{policy, name, fault}`.

use crate::chaos::Injection;

/// The `fault` labels, in the order of the counters: latency first, then the exclusive
/// outcomes as `Fault::as_str` names them.
#[cfg(feature = "metrics")]
const FAULTS: [&str; 4] = ["latency", "error", "hang", "alter"];

/// A chaos handle's counters, one per kind of injection, registered when it is built (install
/// the recorder first), so counting an injection only increments a handle. Only calls given
/// something reach it: a call left alone counts nothing.
pub(crate) struct ChaosCounters {
    /// For the tracing event; the counters took it as a label when they were registered.
    #[cfg(feature = "tracing")]
    name: crate::Name,
    #[cfg(feature = "metrics")]
    counters: [metrics::Counter; FAULTS.len()],
}

impl ChaosCounters {
    #[allow(unused_variables)]
    pub(crate) fn new(name: &crate::Name) -> Self {
        Self {
            #[cfg(feature = "tracing")]
            name: name.clone(),
            #[cfg(feature = "metrics")]
            counters: FAULTS.map(|fault| {
                metrics::counter!(
                    "tidewall_chaos_injections_total",
                    "policy" => "chaos",
                    "name" => name.label(),
                    "fault" => fault
                )
            }),
        }
    }

    /// One call was given `injection` (not [`Injection::NONE`]).
    #[allow(unused_variables)]
    pub(crate) fn injected(&self, injection: &Injection) {
        #[cfg(feature = "tracing")]
        tracing::debug!(
            policy = "chaos",
            name = self.name.as_str(),
            latency = ?injection.latency,
            fault = injection.fault.as_ref().map(crate::chaos::Fault::as_str),
            "fault injected"
        );
        #[cfg(feature = "metrics")]
        {
            if injection.latency.is_some() {
                self.counters[0].increment(1);
            }
            if let Some(fault) = injection.fault {
                let index = match fault {
                    crate::chaos::Fault::Error => 1,
                    crate::chaos::Fault::Hang => 2,
                    crate::chaos::Fault::Alter => 3,
                };
                self.counters[index].increment(1);
            }
        }
    }
}
