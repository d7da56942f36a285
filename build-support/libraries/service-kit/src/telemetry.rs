//! The tracing subscriber: `RUST_LOG` filtering, text or JSON lines on stdout, and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, every span exported over OTLP (gRPC) so one trace can
//! follow a flow across the services.
//!
//! One event is one line, whatever a client sent: JSON escapes strings, and the text format
//! escapes line breaks in every field ([`OneLineFields`]), so a request string holding `\n`
//! cannot forge a line of its own. Text is coloured only on a terminal ([`colour`]): a file or
//! a pipe gets no ANSI escape codes.

use std::{
    io::IsTerminal as _,
    sync::{Arc, Mutex},
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::Subscriber;
use tracing_subscriber::{
    EnvFilter, Layer,
    field::RecordFields,
    fmt::{
        self, FormatFields, MakeWriter,
        format::{DefaultFields, Writer},
    },
    prelude::*,
    registry::LookupSpan,
};

use crate::settings::LogFormat;

/// The standard OpenTelemetry variable naming the collector, e.g. `http://localhost:4317`.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// What `RUST_LOG` gets unless it names a `sqlx` target itself: Postgres notices such as
/// `relation "_sqlx_migrations" already exists, skipping` (each migration run on a fresh
/// database) are INFO events of `sqlx::postgres::notice`, not worth an operator's reading.
const QUIET_NOTICES: &str = "sqlx::postgres::notice=warn";

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

/// Installs the global subscriber, writing to stdout. Call once, first thing in `main`; keep the
/// guard until exit.
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
    let ansi = colour(
        format,
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty()),
    );
    tracing_subscriber::registry()
        .with(otel)
        .with(output(format, ansi, std::io::stdout))
        .with(env_filter(filter)?)
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

/// Whether log lines are coloured: only text written to a terminal, and not when `NO_COLOR` is
/// set (<https://no-color.org>). A file or a pipe never gets ANSI escape codes, nor does JSON.
pub fn colour(format: LogFormat, is_terminal: bool, no_color: bool) -> bool {
    format == LogFormat::Text && is_terminal && !no_color
}

/// The layer writing each event as one line to `writer`: text (coloured when `ansi`) or JSON.
pub fn output<S, W>(format: LogFormat, ansi: bool, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => fmt::layer()
            .with_ansi(ansi)
            .fmt_fields(OneLineFields::default())
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(writer)
            .boxed(),
    }
}

/// The filter `RUST_LOG` describes, with Postgres notices at WARN unless it names a `sqlx`
/// target (`RUST_LOG=info,sqlx::postgres::notice=info` shows them again).
pub fn env_filter(filter: &str) -> anyhow::Result<EnvFilter> {
    let parsed = EnvFilter::try_new(filter)?;
    if filter.contains("sqlx") {
        return Ok(parsed);
    }
    Ok(parsed.add_directive(QUIET_NOTICES.parse()?))
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

/// A log kept in memory, for tests that read what the services wrote: give it to [`output`] as
/// the writer, read it back with [`MemoryLog::text`]. Clones share the log.
#[derive(Debug, Clone, Default)]
pub struct MemoryLog(Arc<Mutex<Vec<u8>>>);

impl MemoryLog {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl std::io::Write for MemoryLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'writer> MakeWriter<'writer> for MemoryLog {
    type Writer = Self;

    fn make_writer(&'writer self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    /// What the text output writes for `emit`, under `filter`.
    fn logged(filter: &str, ansi: bool, emit: impl FnOnce()) -> String {
        let log = MemoryLog::default();
        let subscriber = tracing_subscriber::registry()
            .with(output(LogFormat::Text, ansi, log.clone()))
            .with(env_filter(filter).expect("a valid filter"));
        tracing::subscriber::with_default(subscriber, emit);
        log.text()
    }

    #[test]
    fn text_is_coloured_only_on_a_terminal_without_no_color() {
        assert!(colour(LogFormat::Text, true, false));
        assert!(!colour(LogFormat::Text, false, false));
        assert!(!colour(LogFormat::Text, true, true));
        assert!(!colour(LogFormat::Json, true, false));
        assert!(!colour(LogFormat::Json, false, false));
    }

    #[test]
    fn uncoloured_text_has_no_escape_codes_and_coloured_text_has() {
        let emit = || tracing::warn!(attempt = 1, "transient failure; retrying later");

        let plain = logged("info", false, emit);
        let coloured = logged("info", true, emit);

        assert!(plain.contains(" WARN "), "{plain}");
        assert!(plain.contains("attempt=1"), "{plain}");
        assert!(!plain.contains('\u{1b}'), "{plain:?}");
        assert!(coloured.contains('\u{1b}'), "{coloured:?}");
    }

    #[test]
    fn postgres_notices_are_quiet_unless_rust_log_names_sqlx() {
        let notice = || {
            tracing::info!(
                target: "sqlx::postgres::notice",
                message = "relation \"_sqlx_migrations\" already exists, skipping"
            );
            tracing::warn!(target: "sqlx::postgres::notice", "a warning");
        };

        let default = logged("info", false, notice);
        let raised = logged("info,sqlx::postgres::notice=info", false, notice);

        assert!(!default.contains("already exists"), "{default}");
        assert!(default.contains("a warning"), "{default}");
        assert!(raised.contains("already exists"), "{raised}");
    }

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
