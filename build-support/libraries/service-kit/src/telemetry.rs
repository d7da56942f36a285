//! The tracing subscriber: `RUST_LOG` filtering, text or JSON lines on stdout, and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, every span exported over OTLP (gRPC) so one trace can
//! follow a flow across the services.
//!
//! One event is one line, whatever a client sent: JSON escapes strings, and the text format
//! escapes line breaks in every field ([`OneLineFields`]), so a request string holding `\n`
//! cannot forge a line of its own.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer,
    field::RecordFields,
    fmt::{
        self, FormatFields,
        format::{DefaultFields, Writer},
    },
    prelude::*,
};

use crate::settings::LogFormat;

/// The standard OpenTelemetry variable naming the collector, e.g. `http://localhost:4317`.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Keeps the span exporter alive; dropping it flushes what is still buffered.
#[derive(Debug)]
#[must_use = "dropping the guard stops the span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing the OTLP span exporter failed: {error}");
        }
    }
}

/// Installs the global subscriber. Call once, first thing in `main`; keep the guard until exit.
pub fn init(
    filter: &str,
    format: LogFormat,
    service: &'static str,
) -> anyhow::Result<TelemetryGuard> {
    let provider = match std::env::var(OTLP_ENDPOINT_ENV) {
        Ok(endpoint) if !endpoint.is_empty() => Some(otlp_provider(service)?),
        _ => None,
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .boxed()
    });
    let output = match format {
        LogFormat::Text => fmt::layer().fmt_fields(OneLineFields::default()).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(otel)
        .with(output)
        .with(EnvFilter::try_new(filter)?)
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

fn otlp_provider(service: &'static str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// Formats fields as tracing's default text format does, with every line break escaped (`\n`,
/// `\r`, and the other characters a log viewer may break a line at), so that a field value
/// cannot start a line of its own. Field names lose their ANSI styling; values keep tracing's
/// escaping of terminal control sequences.
#[derive(Debug, Default)]
pub struct OneLineFields(DefaultFields);

impl<'writer> FormatFields<'writer> for OneLineFields {
    fn format_fields<R: RecordFields>(
        &self,
        writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut escaping = EscapeLineBreaks(writer);
        self.0.format_fields(Writer::new(&mut escaping), fields)
    }
}

/// Writes through to `0`, escaping line breaks.
struct EscapeLineBreaks<'writer>(Writer<'writer>);

impl std::fmt::Write for EscapeLineBreaks<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        for part in text.split_inclusive(is_line_break) {
            match part.char_indices().last() {
                Some((at, last)) if is_line_break(last) => {
                    self.0.write_str(&part[..at])?;
                    write!(self.0, "{}", last.escape_default())?;
                }
                _ => self.0.write_str(part)?,
            }
        }
        Ok(())
    }
}

fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    #[test]
    fn line_breaks_are_escaped_and_the_rest_passes() {
        let mut out = String::new();
        write!(
            EscapeLineBreaks(Writer::new(&mut out)),
            "a\nb\r\nc\u{2028}d\té"
        )
        .expect("written");
        assert_eq!(out, "a\\nb\\r\\nc\\u{2028}d\té");
    }
}
