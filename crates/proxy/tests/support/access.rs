//! The access log as a test sees it: every event of the tracing target `access` (the connection
//! records of `ward_proxy::access_log::ConnRecord::emit` and the per-request lines of
//! `ward_proxy::http`), collected with its fields as strings.
//!
//! The capture is installed with `tracing::subscriber::set_default`, so it sees the events of
//! the current thread only. Tests of one binary run on parallel threads; on a current-thread
//! runtime every sidecar task of a test runs on its thread, so each test sees its own records
//! and no other test's. [`AccessLog::capture`] refuses a multi-thread runtime, where records
//! would silently go missing.
//!
//! Set `RUST_LOG` (e.g. `RUST_LOG=debug`) to also print every event of the test to its output.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{EnvFilter, Layer};

/// The tracing target of access records.
pub const TARGET: &str = "access";

/// One access event: its message and its fields, each as text. A field the event left empty
/// (`None`) is absent.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// `connection complete`, `connection failed` or `request complete`.
    pub message: String,
    /// Field name (`src.addr`, `response_flags`...) to value.
    pub fields: BTreeMap<String, String>,
}

impl Record {
    /// The value of field `name`, if the event had one.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// True for a per-connection record (not a per-request line).
    pub fn is_connection(&self) -> bool {
        self.message.starts_with("connection ")
    }
}

impl fmt::Display for Record {
    /// `message {k=v k=v ...}`, for assertion messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {{", self.message)?;
        for (i, (k, v)) in self.fields.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{k}={v:?}")?;
        }
        write!(f, "}}")
    }
}

/// Collects one event's fields as text.
#[derive(Default)]
struct Fields {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields arrive here as Display wrappers, the message as `fmt::Arguments`: both
        // print as plain text.
        self.put(field, format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.to_string());
    }
}

/// The layer that keeps the `access` events.
struct Collect(Arc<Mutex<Vec<Record>>>);

impl<S: Subscriber> Layer<S> for Collect {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let record = Record {
            message: fields.message,
            fields: fields.fields,
        };
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }
}

/// The access records of the current thread since [`AccessLog::capture`], until dropped.
pub struct AccessLog {
    records: Arc<Mutex<Vec<Record>>>,
    _guard: DefaultGuard,
}

impl AccessLog {
    /// Start collecting this thread's access records. Must be called inside a current-thread
    /// tokio runtime.
    pub fn capture() -> AccessLog {
        let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
        assert!(
            matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::CurrentThread)),
            "the access-log capture sees one thread only: run the test on a current-thread \
             runtime (plain #[tokio::test]), got {flavor:?}"
        );
        let records = Arc::new(Mutex::new(Vec::new()));
        let print = EnvFilter::try_from_default_env().ok().map(|filter| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(filter)
        });
        let subscriber = tracing_subscriber::registry()
            .with(Collect(records.clone()))
            .with(print);
        AccessLog {
            records,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The records so far that `select` picks.
    pub fn matching(&self, select: impl Fn(&Record) -> bool) -> Vec<Record> {
        self.records().into_iter().filter(select).collect()
    }

    /// Wait (at most `limit`) until `select` picks at least one record, then let the runtime run
    /// for `settle` so that a second record for the same thing would arrive too; return what
    /// `select` picks then (empty when nothing came).
    pub async fn wait_for(
        &self,
        limit: Duration,
        settle: Duration,
        select: impl Fn(&Record) -> bool,
    ) -> Vec<Record> {
        if super::wait_until(limit, || !self.matching(&select).is_empty()).await {
            tokio::time::sleep(settle).await;
        }
        self.matching(select)
    }
}
