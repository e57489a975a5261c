//! A `tracing` layer that keeps what it sees: each span opened, with its fields, and each
//! event, with its fields and the span it was in.

use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

/// Fields in the order recorded, each value as `Debug` prints it: a `&str` in quotes, a
/// `%value` and an event's message bare.
pub type Fields = Vec<(&'static str, String)>;

/// A span's name and fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub name: &'static str,
    pub fields: Fields,
}

/// `NAME k=v k=v`.
impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)?;
        for (name, value) in &self.fields {
            write!(f, " {name}={value}")?;
        }
        Ok(())
    }
}

/// One thing a [`Trace`] saw.
#[derive(Clone, Debug)]
pub enum Seen {
    /// A span opened.
    Span(Span),
    /// An event, in the span it was in (`None` outside every span).
    Event { span: Option<Span>, fields: Fields },
}

impl Seen {
    /// A span's fields, or an event's (its message among them).
    pub fn fields(&self) -> &Fields {
        match self {
            Self::Span(span) => &span.fields,
            Self::Event { fields, .. } => fields,
        }
    }

    /// An event's message (`None` for a span).
    pub fn message(&self) -> Option<&str> {
        match self {
            Self::Span(_) => None,
            Self::Event { fields, .. } => field(fields, "message"),
        }
    }

    /// The name of the span an event was in (`None` for a span or an event outside them).
    pub fn span_name(&self) -> Option<&'static str> {
        match self {
            Self::Event {
                span: Some(span), ..
            } => Some(span.name),
            _ => None,
        }
    }

    /// A span as `span NAME k=v…`, an event as `SPAN: MESSAGE` (`-` outside every span).
    pub fn outline(&self) -> String {
        match self {
            Self::Span(_) => self.to_string(),
            Self::Event { .. } => format!(
                "{}: {}",
                self.span_name().unwrap_or("-"),
                self.message().unwrap_or_default()
            ),
        }
    }
}

/// A span as `span NAME k=v…`, an event as `SPAN: MESSAGE k=v…` (its other fields after its
/// message; `-` outside every span).
impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Span(span) => write!(f, "span {span}"),
            Self::Event { fields, .. } => {
                write!(f, "{}:", self.span_name().unwrap_or("-"))?;
                if let Some(message) = self.message() {
                    write!(f, " {message}")?;
                }
                for (name, value) in fields.iter().filter(|(name, _)| *name != "message") {
                    write!(f, " {name}={value}")?;
                }
                Ok(())
            }
        }
    }
}

fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(have, _)| *have == name)
        .map(|(_, value)| value.as_str())
}

struct Record<'a>(&'a mut Fields);

impl Visit for Record<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push((field.name(), format!("{value:?}")));
    }
}

/// The layer: everything seen, in order; clones share it.
#[derive(Clone, Default)]
pub struct Trace(Arc<Mutex<Vec<Seen>>>);

impl Trace {
    /// A subscriber with this layer, this thread's default until the guard drops.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    /// Everything seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    /// Everything seen so far, one line each ([`Seen`]'s `Display`).
    pub fn lines(&self) -> Vec<String> {
        self.seen().iter().map(Seen::to_string).collect()
    }

    /// Everything seen so far, one [`Seen::outline`] each.
    pub fn outline(&self) -> Vec<String> {
        self.seen().iter().map(Seen::outline).collect()
    }
}

impl<S> Layer<S> for Trace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Record(&mut fields));
        let span = Span {
            name: attrs.metadata().name(),
            fields,
        };
        if let Some(opened) = ctx.span(id) {
            opened.extensions_mut().insert(span.clone());
        }
        self.0.lock().unwrap().push(Seen::Span(span));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Record(&mut fields));
        let span = ctx
            .event_span(event)
            .and_then(|s| s.extensions().get::<Span>().cloned());
        self.0.lock().unwrap().push(Seen::Event { span, fields });
    }
}
