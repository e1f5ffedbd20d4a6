//! Log setup. `RUST_LOG` overrides the default filter (`info`).

use tracing_subscriber::EnvFilter;

/// Install the global subscriber: text or JSON lines on stderr.
pub(crate) fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,rustls=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.init();
    }
}
