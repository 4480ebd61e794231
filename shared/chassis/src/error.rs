//! The one error type of every Cascade handler, and its mapping to gRPC
//! status codes with google.rpc error details. Handlers return
//! `Result<_, ServiceError>`; nothing else builds a `tonic::Status`.

use std::fmt;
use std::time::Duration;

use sea_orm::DbErr;
use sea_orm::sqlx::postgres::PgDatabaseError;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// A field of the request that was refused (google.rpc.BadRequest.FieldViolation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `account.name`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// A precondition that does not hold (google.rpc.PreconditionFailure.Violation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreconditionViolation {
    /// Kind of precondition, e.g. `STAGE` or `MISSING_FIELD`.
    pub kind: String,
    /// What it is about, e.g. `account/0192...` or `close_date`.
    pub subject: String,
    /// What does not hold and what would make it hold.
    pub description: String,
}

impl PreconditionViolation {
    pub fn new(
        kind: impl Into<String>,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            kind: kind.into(),
            subject: subject.into(),
            description: description.into(),
        }
    }
}

/// Every way a Cascade request can fail, each mapped to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// INVALID_ARGUMENT with a BadRequest listing each offending field.
    #[error("invalid argument: {}", join_violations(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// NOT_FOUND with a ResourceInfo naming the resource, and why it is
    /// not there when that is more than "it does not exist" (`because`).
    #[error("{resource} {id} not found")]
    NotFound {
        resource: &'static str,
        id: String,
        why: Option<&'static str>,
    },
    /// ALREADY_EXISTS with a ResourceInfo naming the resource.
    #[error("{message}")]
    AlreadyExists {
        resource: &'static str,
        id: String,
        message: String,
    },
    /// FAILED_PRECONDITION with a PreconditionFailure listing what does not
    /// hold, and RetryInfo when it will hold after a known time.
    #[error("{message}")]
    FailedPrecondition {
        message: String,
        violations: Vec<PreconditionViolation>,
        retry_after: Option<Duration>,
    },
    /// ABORTED: a concurrent change won; the caller may retry.
    #[error("{0}")]
    Aborted(String),
    /// UNAVAILABLE: a dependency (database, another service) is down; retry.
    #[error("{0}")]
    Unavailable(String),
    /// UNAVAILABLE with ErrorInfo reason OVERLOADED: this replica holds as
    /// much work as it may (a bound of ours, not the caller's input); retry
    /// with backoff, perhaps on another replica.
    #[error("{0}")]
    Overloaded(String),
    /// UNAUTHENTICATED: missing or bad credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// PERMISSION_DENIED: valid credentials, not allowed.
    #[error("{0}")]
    PermissionDenied(String),
    /// RESOURCE_EXHAUSTED with RetryInfo when a retry delay is known.
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after: Option<Duration>,
    },
    /// OUT_OF_RANGE: a result beyond what the API can carry (a report sum
    /// past 64-bit money units), rather than a wrong figure.
    #[error("{0}")]
    OutOfRange(String),
    /// INTERNAL: a bug or an unexpected storage error. The cause is logged,
    /// never sent to the caller.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The message of an INVALID_ARGUMENT: the reported violations in order,
/// whole (never cut mid-text), as many as fit in `MAX_MESSAGE`, and how many
/// more there are (all of `reported` are in the details).
fn join_violations(violations: &[FieldViolation]) -> String {
    let mut joined = String::new();
    let mut shown = 0;
    for v in reported(violations) {
        let part = format!("{}: {}", bounded(&v.field), described(&v.description));
        // Room for the separator and the "and N more" tail.
        if shown > 0 && joined.len() + part.len() + 40 > MAX_MESSAGE {
            break;
        }
        if shown > 0 {
            joined.push_str("; ");
        }
        joined.push_str(&part);
        shown += 1;
    }
    if violations.len() > shown {
        joined.push_str(&format!("; and {} more", violations.len() - shown));
    }
    joined
}

/// The violations a status carries in its details: in order, at most
/// `MAX_REPORTED_VIOLATIONS` and `DETAILS_BUDGET` bytes of text (at least
/// one).
fn reported(violations: &[FieldViolation]) -> &[FieldViolation] {
    let mut used = 0;
    let mut count = 0;
    for v in violations.iter().take(MAX_REPORTED_VIOLATIONS) {
        used += bounded(&v.field).len() + described(&v.description).len();
        if count > 0 && used > DETAILS_BUDGET {
            break;
        }
        count += 1;
    }
    &violations[..count]
}

// A status travels in HTTP/2 trailers (grpc-message, and the details in
// grpc-status-details-bin, base64). gRPC implementations refuse metadata over
// 8 KiB (grpc-core's default; hyper's client resets the stream), so a request
// with a thousand bad items, or one 100k-character value echoed back, would
// get a protocol error instead of its INVALID_ARGUMENT. These bounds keep
// every status well under that (about 3 KiB of details in base64, at most 1
// KiB of message): at most 10 violations and 2 KiB of their text (the rest
// counted), field paths cut at 128 bytes and descriptions at 400 (the
// service's own descriptions are shorter, and quote caller text briefly:
// `validate::shown`), the message made of whole violations.
const MAX_REPORTED_VIOLATIONS: usize = 10;
const MAX_REPORTED_TEXT: usize = 128;
const MAX_DESCRIPTION: usize = 400;
const DETAILS_BUDGET: usize = 2048;
const MAX_MESSAGE: usize = 1024;

/// A description cut to at most `MAX_DESCRIPTION` bytes.
fn described(text: &str) -> String {
    truncate(text, MAX_DESCRIPTION)
}

/// `text` cut to at most `MAX_REPORTED_TEXT` bytes, on a character boundary.
pub(crate) fn bounded(text: &str) -> String {
    truncate(text, MAX_REPORTED_TEXT)
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl ServiceError {
    /// INVALID_ARGUMENT for a single field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn not_found(resource: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            resource,
            id: id.into(),
            why: None,
        }
    }

    /// A NOT_FOUND that says why there is nothing (e.g. "no activity has
    /// been recorded for it"), in its message and its ResourceInfo's
    /// description. Other errors are returned as they are.
    pub fn because(self, why: &'static str) -> Self {
        match self {
            Self::NotFound { resource, id, .. } => Self::NotFound {
                resource,
                id,
                why: Some(why),
            },
            other => other,
        }
    }

    pub fn already_exists(
        resource: &'static str,
        id: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::AlreadyExists {
            resource,
            id: id.into(),
            message: message.into(),
        }
    }

    /// FAILED_PRECONDITION with one violation.
    pub fn precondition(
        kind: impl Into<String>,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        let violation = PreconditionViolation::new(kind, subject, description);
        Self::FailedPrecondition {
            message: violation.description.clone(),
            violations: vec![violation],
            retry_after: None,
        }
    }

    /// A FAILED_PRECONDITION that will hold once `delay` has passed (an
    /// erasure settling): its status carries RetryInfo, so a caller waits
    /// that long rather than retrying at its own pace. Other errors are
    /// returned as they are.
    pub fn holds_after(self, delay: Duration) -> Self {
        match self {
            Self::FailedPrecondition {
                message,
                violations,
                ..
            } => Self::FailedPrecondition {
                message,
                violations,
                retry_after: Some(delay),
            },
            other => other,
        }
    }

    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::FailedPrecondition { .. } => Code::FailedPrecondition,
            Self::Aborted(_) => Code::Aborted,
            Self::Unavailable(_) | Self::Overloaded(_) => Code::Unavailable,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::ResourceExhausted { .. } => Code::ResourceExhausted,
            Self::OutOfRange(_) => Code::OutOfRange,
            Self::Internal(_) => Code::Internal,
        }
    }
}

const ERROR_DOMAIN: &str = "cascade";

impl From<ServiceError> for tonic::Status {
    fn from(error: ServiceError) -> Self {
        let code = error.code();
        let tenant = match &error {
            ServiceError::NotFound { .. } => crate::context::serving_tenant(),
            _ => None,
        };
        let mut message = error.to_string();
        if let Some(tenant) = &tenant {
            message.push_str(&format!(" in tenant {tenant}"));
        }
        if let ServiceError::NotFound { why: Some(why), .. } = &error {
            message.push_str(&format!(": {why}"));
        }
        let message = truncate(&message, MAX_MESSAGE);
        let details = match &error {
            ServiceError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in reported(violations) {
                    details.add_bad_request_violation(bounded(&v.field), described(&v.description));
                }
                details
            }
            ServiceError::NotFound { resource, id, why } => ErrorDetails::with_resource_info(
                *resource,
                bounded(id),
                tenant.map_or_else(String::new, |t| format!("tenant/{t}")),
                why.unwrap_or("not found"),
            ),
            ServiceError::AlreadyExists {
                resource,
                id,
                message,
            } => ErrorDetails::with_resource_info(*resource, bounded(id), "", bounded(message)),
            ServiceError::FailedPrecondition {
                violations,
                retry_after,
                ..
            } => {
                let mut details = ErrorDetails::new();
                if let Some(delay) = retry_after {
                    details.set_retry_info(Some(*delay));
                }
                for v in violations.iter().take(MAX_REPORTED_VIOLATIONS) {
                    details.add_precondition_failure_violation(
                        bounded(&v.kind),
                        bounded(&v.subject),
                        described(&v.description),
                    );
                }
                details
            }
            ServiceError::ResourceExhausted {
                retry_after: Some(delay),
                ..
            } => ErrorDetails::with_retry_info(Some(*delay)),
            ServiceError::Unavailable(_) => ErrorDetails::with_error_info(
                "DEPENDENCY_UNAVAILABLE",
                ERROR_DOMAIN,
                std::collections::HashMap::new(),
            ),
            ServiceError::Overloaded(_) => ErrorDetails::with_error_info(
                "OVERLOADED",
                ERROR_DOMAIN,
                std::collections::HashMap::new(),
            ),
            ServiceError::Internal(cause) => {
                // The cause stays in the log: it may name tables, hosts or values.
                tracing::error!(error = ?cause, "internal error");
                ErrorDetails::new()
            }
            _ => ErrorDetails::new(),
        };
        tonic::Status::with_error_details(code, message, details)
    }
}

impl From<DbErr> for ServiceError {
    fn from(error: DbErr) -> Self {
        if is_connection_error(&error) {
            tracing::warn!(error = %RedactedDbErr(&error), "database unavailable");
            return Self::Unavailable("the database is unavailable; retry later".into());
        }
        if is_contention(&error) {
            tracing::warn!(error = %RedactedDbErr(&error), "database busy");
            return Self::Unavailable(
                "the database is busy with other writes; nothing was written, retry".into(),
            );
        }
        if let Some(fault) = server_fault(&error) {
            tracing::warn!(error = %RedactedDbErr(&error), "database could not serve the statement");
            return Self::Unavailable(format!("{fault}; retry later"));
        }
        if is_stale_statement(&error) {
            tracing::warn!(error = %RedactedDbErr(&error), "a prepared statement went stale");
            return Self::Unavailable(
                "the database's schema changed under this request (an upgrade); retry".into(),
            );
        }
        Self::Internal(anyhow::Error::new(error))
    }
}

/// Whether a storage error means "the database cannot be reached" (retryable,
/// UNAVAILABLE) rather than a problem with the statement.
pub fn is_connection_error(error: &DbErr) -> bool {
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => {
            matches!(
                e.as_ref(),
                sea_orm::sqlx::Error::Io(_)
                    | sea_orm::sqlx::Error::PoolTimedOut
                    | sea_orm::sqlx::Error::PoolClosed
                    | sea_orm::sqlx::Error::WorkerCrashed
            ) || e
                .as_database_error()
                .filter(|d| d.try_downcast_ref::<PgDatabaseError>().is_some())
                .and_then(|d| d.code())
                .is_some_and(|code| is_server_gone(&code))
        }
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs of a server that ended or refused the session rather
/// than the statement: connection exceptions (class 08), shutdowns and
/// restarts (57P01-57P03), too many connections (53300). A pooled connection
/// is pinged only after sitting idle (`db::connect`), so one the server ended
/// while it was in use reports this on its next statement.
fn is_server_gone(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// Whether a statement lost a race for a lock: SQLite still busy after its
/// busy timeout, or a PostgreSQL deadlock, serialization failure or lock
/// timeout. The transaction is rolled back, so a retry is safe.
pub fn is_contention(error: &DbErr) -> bool {
    let Some(code) = sqlx_error(error)
        .and_then(|e| e.as_database_error())
        .and_then(|d| d.code())
    else {
        return false;
    };
    match code.as_ref() {
        // PostgreSQL's five-character SQLSTATEs.
        "40001" | "40P01" | "55P03" => true,
        c if c.len() == 5 => false,
        // SQLite's (extended) result codes: SQLITE_BUSY and SQLITE_LOCKED.
        c => c.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6)),
    }
}

/// Whether the database server, not the statement, kept a statement from
/// completing, in a way that passes: see [`server_fault`].
#[cfg(test)]
fn is_database_fault(error: &DbErr) -> bool {
    server_fault(error).is_some()
}

/// What kept the database from completing a statement, when it is the
/// server's state rather than the statement (a retry, here or on another
/// replica, can succeed): a pooled connection to a primary demoted by a
/// failover (25006), insufficient resources such as a full disk or memory
/// (class 53, but 53300, which `is_server_gone` takes), a statement
/// timeout (57014), a system or I/O error (58000, 58030); on SQLite a full
/// disk (SQLITE_FULL) or an I/O error (SQLITE_IOERR and its extended
/// codes). Busy and locked are contention (`is_contention`).
fn server_fault(error: &DbErr) -> Option<&'static str> {
    let code = sqlx_error(error)
        .and_then(|e| e.as_database_error())
        .and_then(|d| d.code())?;
    match code.as_ref() {
        // PostgreSQL's five-character SQLSTATEs.
        "25006" => Some("the database server is read-only (a failover in progress)"),
        "53000" | "53100" | "53200" | "53400" => {
            Some("the database is out of resources (disk, memory or a configured limit)")
        }
        "57014" => Some("the database cancelled the statement (a statement timeout)"),
        "58000" | "58030" => Some("the database had a system or I/O error"),
        c if c.len() == 5 => None,
        // SQLite's (extended) result codes: SQLITE_IOERR and SQLITE_FULL.
        c => match c.parse::<i32>().ok()? & 0xff {
            10 => Some("the database had an I/O error"),
            13 => Some("the database's disk is full"),
            _ => None,
        },
    }
}

/// Whether PostgreSQL refused a statement prepared before a schema change
/// altered its result type (a migration of a newer release changed a
/// column's type or collation). The statement did nothing, and the
/// connection prepares its statements again before its next query
/// (vendor/sqlx-postgres/PATCHED.md, change 2), so a retry succeeds. The
/// vendored connection matches the same error (`note_stale_statement`):
/// keep the two in step.
pub fn is_stale_statement(error: &DbErr) -> bool {
    sqlx_error(error)
        .and_then(|e| e.as_database_error())
        .and_then(|d| d.try_downcast_ref::<PgDatabaseError>())
        .is_some_and(|d| d.code() == "0A000" && d.routine() == Some("RevalidateCachedQuery"))
}

/// The driver's error under a statement's `DbErr`, if it has one.
fn sqlx_error(error: &DbErr) -> Option<&sea_orm::sqlx::Error> {
    match error {
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

/// Displays a storage error without any connection URL it may carry.
struct RedactedDbErr<'a>(&'a DbErr);

impl fmt::Display for RedactedDbErr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::secret::redact_urls(&self.0.to_string()).fmt(f)
    }
}

/// Whether a storage error is a unique-constraint violation.
pub fn is_unique_violation(error: &DbErr) -> bool {
    matches!(
        error.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// A settings file or value that cannot be used. The message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct SettingsError(String);

impl SettingsError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_each_field_violation() {
        let error = ServiceError::InvalidArgument(vec![
            FieldViolation::new("account.name", "is required"),
            FieldViolation::new("account.domain", "is not a domain name"),
        ]);
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("account.name: is required"));
        let bad_request = status
            .get_details_bad_request()
            .expect("BadRequest detail present");
        let fields: Vec<_> = bad_request
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["account.name", "account.domain"]);
    }

    #[test]
    fn a_status_stays_small_whatever_the_input() {
        let long = "é".repeat(50_000);
        let violations = (0..5000)
            .map(|i| FieldViolation::new(format!("items[{i}].{long}"), long.clone()))
            .collect();
        let status = tonic::Status::from(ServiceError::InvalidArgument(violations));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().len() <= MAX_MESSAGE);
        let bad_request = status.get_details_bad_request().expect("BadRequest");
        assert!((1..=MAX_REPORTED_VIOLATIONS).contains(&bad_request.field_violations.len()));
        assert!(
            status.details().len() < 3072,
            "{} bytes",
            status.details().len()
        );
        assert!(status.message().starts_with("invalid argument: items[0]."));
        assert!(status.message().ends_with(" more"), "{}", status.message());
    }

    #[test]
    fn the_services_own_words_are_not_cut() {
        // A description of the service's own (a list of writable fields)
        // longer than a field path may be: reported whole, in the details
        // and in the message.
        let own = format!(
            "\"x\" is not a writable field; writable: {}",
            [
                "engaged_threshold",
                "prioritized_threshold",
                "qualified_stage_enabled"
            ]
            .repeat(5)
            .join(", ")
        );
        assert!(own.len() > 300 && own.len() < MAX_DESCRIPTION);
        let violations = vec![
            FieldViolation::new("update_mask.paths[0]", own.clone()),
            FieldViolation::new("update_mask.paths[1]", own.clone()),
        ];
        let status = tonic::Status::from(ServiceError::InvalidArgument(violations));
        let bad_request = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad_request.field_violations.len(), 2);
        assert!(
            bad_request
                .field_violations
                .iter()
                .all(|v| v.description == own)
        );
        assert!(status.message().ends_with(&own), "{}", status.message());
    }

    #[test]
    fn a_short_list_is_reported_whole() {
        let violations = (0..3)
            .map(|i| FieldViolation::new(format!("items[{i}]"), "is bad"))
            .collect();
        let status = tonic::Status::from(ServiceError::InvalidArgument(violations));
        assert_eq!(
            status.message(),
            "invalid argument: items[0]: is bad; items[1]: is bad; items[2]: is bad"
        );
        let many = (0..12)
            .map(|i| FieldViolation::new(format!("items[{i}]"), "is bad"))
            .collect();
        let status = tonic::Status::from(ServiceError::InvalidArgument(many));
        assert!(
            status.message().ends_with("; and 2 more"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn failed_precondition_carries_violations() {
        let status = tonic::Status::from(ServiceError::precondition(
            "STAGE",
            "account/1",
            "account is TARGETED; Qualify needs PRIORITIZED",
        ));
        assert_eq!(status.code(), Code::FailedPrecondition);
        let failure = status
            .get_details_precondition_failure()
            .expect("PreconditionFailure detail present");
        assert_eq!(failure.violations[0].r#type, "STAGE");
        assert_eq!(failure.violations[0].subject, "account/1");
    }

    /// A NOT_FOUND raised while serving a request names the request's
    /// tenant, in the message and as the ResourceInfo's owner; outside a
    /// request it names none.
    #[tokio::test]
    async fn not_found_names_the_tenant_it_looked_in() {
        let status = || tonic::Status::from(ServiceError::not_found("account", "a1"));
        let tenant = crate::TenantId::parse("acme-corp").expect("tenant");
        let served = crate::context::serving(tenant, async { status() }).await;
        assert_eq!(served.code(), Code::NotFound);
        assert_eq!(served.message(), "account a1 not found in tenant acme-corp");
        let info = served.get_details_resource_info().expect("ResourceInfo");
        assert_eq!(
            (
                info.resource_type.as_str(),
                info.resource_name.as_str(),
                info.owner.as_str()
            ),
            ("account", "a1", "tenant/acme-corp")
        );
        let outside = status();
        assert_eq!(outside.message(), "account a1 not found");
        // Why there is nothing, when there is more to say than "no such".
        let why = tonic::Status::from(
            ServiceError::not_found("account score", "a1").because("no activity recorded"),
        );
        assert_eq!(
            why.message(),
            "account score a1 not found: no activity recorded"
        );
        assert_eq!(
            why.get_details_resource_info()
                .expect("ResourceInfo")
                .description,
            "no activity recorded"
        );
        assert_eq!(
            outside
                .get_details_resource_info()
                .expect("ResourceInfo")
                .owner,
            ""
        );
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let status = tonic::Status::from(ServiceError::internal(anyhow::anyhow!(
            "relation accounts at postgres://admin:hunter2@db does not exist"
        )));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn pool_timeouts_are_unavailable() {
        let error = DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout);
        assert_eq!(ServiceError::from(error).code(), Code::Unavailable);
    }

    #[tokio::test]
    async fn a_busy_database_is_unavailable_not_internal() {
        use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
        use sea_orm::{ConnectionTrait, TransactionTrait};
        let path = std::env::temp_dir().join(format!("cascade-busy-{}.db", std::process::id()));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::ZERO);
        let pool = || async {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await
                .expect("pool");
            sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool)
        };
        let (a, b) = (pool().await, pool().await);
        a.execute_unprepared("CREATE TABLE t (x INTEGER)")
            .await
            .expect("table");
        let txn = a.begin().await.expect("begin");
        txn.execute_unprepared("INSERT INTO t VALUES (1)")
            .await
            .expect("first writer");
        let error = b
            .execute_unprepared("INSERT INTO t VALUES (2)")
            .await
            .expect_err("the second writer finds the database locked");
        assert!(is_contention(&error), "{error}");
        let status = tonic::Status::from(ServiceError::from(error));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("retry"), "{}", status.message());
        txn.rollback().await.expect("rollback");
        std::fs::remove_file(&path).ok();
    }
    /// A statement's error carrying a driver's `code`, as the drivers
    /// report SQLSTATEs (PostgreSQL) and extended result codes (SQLite).
    fn coded(code: &'static str) -> DbErr {
        #[derive(Debug)]
        struct Coded(&'static str);
        impl fmt::Display for Coded {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "error {}", self.0)
            }
        }
        impl std::error::Error for Coded {}
        impl sea_orm::sqlx::error::DatabaseError for Coded {
            fn message(&self) -> &str {
                "coded"
            }
            fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
                Some(self.0.into())
            }
            fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
                self
            }
            fn kind(&self) -> sea_orm::sqlx::error::ErrorKind {
                sea_orm::sqlx::error::ErrorKind::Other
            }
        }
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(
            sea_orm::sqlx::Error::Database(Box::new(Coded(code))),
        )))
    }

    fn assert_retryable(error: DbErr) {
        let status = tonic::Status::from(ServiceError::from(error));
        assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
        assert!(status.message().contains("retry"), "{}", status.message());
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "DEPENDENCY_UNAVAILABLE");
    }

    /// A server that cannot serve a statement now (read-only after a
    /// failover, out of disk or memory, a statement timeout, an I/O error)
    /// is UNAVAILABLE, retryable, on both databases; a fault of the
    /// statement itself stays INTERNAL.
    #[test]
    fn server_faults_are_unavailable_not_internal() {
        for code in [
            // PostgreSQL.
            "25006", "53000", "53100", "53200", "53400", "57014", "58000", "58030",
            // SQLite: SQLITE_IOERR, SQLITE_IOERR_WRITE, SQLITE_IOERR_FSYNC,
            // SQLITE_FULL, and busy and locked (contention).
            "10", "778", "1034", "13", "5", "517", "6", "262",
        ] {
            assert!(
                is_database_fault(&coded(code)) || is_contention(&coded(code)),
                "{code}"
            );
            assert_retryable(coded(code));
        }
        // A syntax error, a missing table, a constraint: the statement's.
        for code in ["42601", "42P01", "23505", "1", "19", "2067"] {
            assert!(!is_database_fault(&coded(code)), "{code}");
            let status = tonic::Status::from(ServiceError::from(coded(code)));
            assert_eq!(status.code(), Code::Internal, "{code}");
        }
    }

    /// SQLite's SQLITE_FULL as the driver reports it: a database that may
    /// grow no further (a page limit standing for a full disk).
    #[tokio::test]
    async fn a_full_sqlite_database_is_unavailable() {
        use sea_orm::ConnectionTrait;
        use sea_orm::sqlx::sqlite::SqlitePoolOptions;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("pool");
        let db = sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool);
        db.execute_unprepared("CREATE TABLE t (x BLOB); PRAGMA max_page_count = 8")
            .await
            .expect("table");
        let error = db
            .execute_unprepared("INSERT INTO t VALUES (zeroblob(1000000))")
            .await
            .expect_err("the database is full");
        assert!(is_database_fault(&error), "{error}");
        assert_retryable(error);
    }

    /// PostgreSQL's read-only server (25006) and statement timeout (57014)
    /// as the driver reports them, on the test server when there is one
    /// (`CASCADE_TEST_POSTGRES_URL`). Nothing is written.
    #[tokio::test]
    async fn a_read_only_or_timed_out_postgres_is_unavailable() {
        use sea_orm::ConnectionTrait;
        use sea_orm::sqlx::postgres::PgPoolOptions;
        let Some(url) = std::env::var("CASCADE_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(
                std::env::var_os("CASCADE_TEST_REQUIRE_POSTGRES").is_none(),
                "CASCADE_TEST_REQUIRE_POSTGRES is set but CASCADE_TEST_POSTGRES_URL is not"
            );
            eprintln!("skipped: set CASCADE_TEST_POSTGRES_URL to run it");
            return;
        };
        // One connection, so that each SET holds for the statement after it.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("connect");
        let db = sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool);
        db.execute_unprepared("SET default_transaction_read_only = on")
            .await
            .expect("read-only session");
        let read_only = db
            .execute_unprepared("CREATE TABLE cascade_read_only_probe (x INTEGER)")
            .await
            .expect_err("a read-only server refuses writes");
        assert!(is_database_fault(&read_only), "{read_only}");
        assert_retryable(read_only);
        db.execute_unprepared("SET statement_timeout = 20")
            .await
            .expect("timeout");
        let timed_out = db
            .execute_unprepared("SELECT pg_sleep(5)")
            .await
            .expect_err("the statement times out");
        assert!(is_database_fault(&timed_out), "{timed_out}");
        assert_retryable(timed_out);
    }
}
