//! Request validation helpers. A [`Validator`] collects every field violation
//! of a request so the caller learns all that is wrong in one answer.

use chrono::{DateTime, Utc};

use crate::error::{FieldViolation, ServiceError};

/// Collects field violations; `finish` turns them into INVALID_ARGUMENT.
#[derive(Debug, Default)]
pub struct Validator {
    violations: Vec<FieldViolation>,
    /// Violations past `MAX_KEPT`, counted only.
    omitted: usize,
}

/// The most violations a request keeps: a status reports ten at most
/// (`error.rs`), and a request of two million bad list entries must not
/// hold two million descriptions in memory.
const MAX_KEPT: usize = 1000;

/// The most paths an update mask may name: more than any resource has
/// fields, far fewer than a 4 MiB request could carry.
pub const MAX_MASK_PATHS: usize = 100;

/// An id as stored: a UUID hyphenated in lower case (anything else trimmed
/// and lower-cased), whatever form a caller wrote it in.
pub fn canonical_id(value: &str) -> String {
    let value = value.trim();
    match uuid::Uuid::try_parse(value) {
        Ok(id) => id.hyphenated().to_string(),
        Err(_) => value.to_ascii_lowercase(),
    }
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.push(FieldViolation::new(field, description));
    }

    fn push(&mut self, violation: FieldViolation) {
        if self.violations.len() < MAX_KEPT {
            self.violations.push(violation);
        } else {
            self.omitted += 1;
        }
    }

    /// The value of a check made elsewhere, its violations joined to these
    /// so a refusal names every field at fault at once: `None` when it was
    /// refused as bad input. Any other error is returned as it is.
    pub fn join<T>(&mut self, checked: Result<T, ServiceError>) -> Result<Option<T>, ServiceError> {
        match checked {
            Ok(value) => Ok(Some(value)),
            Err(ServiceError::InvalidArgument(violations)) => {
                for violation in violations {
                    self.push(violation);
                }
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    pub fn is_valid(&self) -> bool {
        self.violations.is_empty()
    }

    /// A required text field: trimmed, non-empty, at most `max` characters.
    pub fn required_text(&mut self, field: &str, value: &str, max: usize) -> String {
        let value = value.trim();
        if is_blank(value) {
            self.add(field, "is required");
        } else {
            self.max_len(field, value, max);
        }
        value.to_owned()
    }

    /// An optional text field: trimmed, at most `max` characters; `None` when empty.
    pub fn optional_text(&mut self, field: &str, value: &str, max: usize) -> Option<String> {
        let value = value.trim();
        if is_blank(value) {
            return None;
        }
        self.max_len(field, value, max);
        Some(value.to_owned())
    }

    /// A required free-text field (a note, a reason): as `required_text`,
    /// but line breaks and tabs are kept, as a CRM's note field sends them.
    pub fn required_prose(&mut self, field: &str, value: &str, max: usize) -> String {
        let value = value.trim();
        if is_blank(value) {
            self.add(field, "is required");
        } else {
            self.check_len(field, value, max, Text::Prose);
        }
        value.to_owned()
    }

    /// An optional free-text field: as `optional_text`, line breaks and tabs
    /// kept.
    pub fn optional_prose(&mut self, field: &str, value: &str, max: usize) -> Option<String> {
        let value = value.trim();
        if is_blank(value) {
            return None;
        }
        self.check_len(field, value, max, Text::Prose);
        Some(value.to_owned())
    }

    /// A list filter sent as only white space is refused: read as no filter,
    /// it listed everything, and a sync client looking a blank key up took
    /// an unrelated record.
    pub fn filter_not_blank(&mut self, field: &str, value: &str) {
        if !value.is_empty() && is_blank(value) {
            self.add(
                field,
                "must not be blank: send it empty to list without this filter",
            );
        }
    }

    fn max_len(&mut self, field: &str, value: &str, max: usize) {
        self.check_len(field, value, max, Text::Line);
    }

    fn check_len(&mut self, field: &str, value: &str, max: usize, text: Text) {
        let len = value.chars().count();
        if len > max {
            self.add(
                field,
                format!("must be at most {max} characters (got {len})"),
            );
        }
        let refused = |c: char| match text {
            Text::Line => c.is_control(),
            Text::Prose => c.is_control() && !matches!(c, '\n' | '\r' | '\t'),
        };
        if value.chars().any(refused) {
            self.add(
                field,
                match text {
                    Text::Line => "must not contain control characters",
                    Text::Prose => {
                        "must not contain control characters other than line breaks and tabs"
                    }
                },
            );
        }
    }

    /// A required server-assigned id (a UUID), in the form ids are stored
    /// in (hyphenated, lower case), so it compares with them as text.
    pub fn required_id(&mut self, field: &str, value: &str) -> String {
        if value.trim().is_empty() {
            self.add(field, "is required");
            return String::new();
        }
        if uuid::Uuid::try_parse(value.trim()).is_err() {
            self.add(field, "must be an id returned by this service (a UUID)");
        }
        canonical_id(value)
    }

    /// An optional server-assigned id, as [`Self::required_id`]: `None`
    /// when empty.
    pub fn optional_id(&mut self, field: &str, value: &str) -> Option<String> {
        (!value.trim().is_empty()).then(|| self.required_id(field, value))
    }

    /// An optional caller request id for idempotent creates: `None` when
    /// empty. One of white space alone is refused rather than taken for
    /// none: a caller who sent it meant to be idempotent, and a retry
    /// would create again.
    pub fn request_id(&mut self, field: &str, value: &str) -> Option<String> {
        if !value.is_empty() && is_blank(value) {
            self.add(field, "must not be blank: send an id, or leave it empty for a call that is not idempotent");
            return None;
        }
        self.optional_text(field, value, 128)
    }

    /// An optional internet domain name, lower-cased.
    pub fn optional_domain(&mut self, field: &str, value: &str) -> Option<String> {
        let value = value.trim();
        if value.is_empty() {
            return None;
        }
        // One trailing dot is the DNS root ("example.com."); "." or ".."
        // are not domains, and are refused rather than stored empty.
        let value = value
            .strip_suffix('.')
            .unwrap_or(value)
            .to_ascii_lowercase();
        if !is_domain(&value) {
            self.add(field, "must be a domain name such as example.com");
        }
        Some(value)
    }

    /// An optional email address, lower-cased, its domain without the DNS
    /// root's trailing dot (as `optional_domain` takes it).
    pub fn optional_email(&mut self, field: &str, value: &str) -> Option<String> {
        let mut value = value.trim().to_ascii_lowercase();
        if value.is_empty() {
            return None;
        }
        if value.ends_with('.') && value.contains('@') {
            value.pop();
        }
        if value.len() > 254 || email_domain(&value).is_none() {
            self.add(field, "must be an email address such as jane@example.com");
        }
        Some(value)
    }

    /// A required timestamp that a human could have meant (years 1970..=9999).
    pub fn required_time(
        &mut self,
        field: &str,
        value: Option<&prost_types::Timestamp>,
    ) -> Option<DateTime<Utc>> {
        match value {
            None => {
                self.add(field, "is required");
                None
            }
            Some(ts) => match crate::time::from_timestamp(ts) {
                Some(time) => Some(time),
                None => {
                    self.add(
                        field,
                        "must be a valid time between 1970-01-01 and 9999-12-31",
                    );
                    None
                }
            },
        }
    }

    /// `mask_paths`, reporting a missing mask with the request's other
    /// violations.
    pub fn mask_paths(&mut self, mask: Option<&prost_types::FieldMask>) -> Vec<(usize, String)> {
        let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
        if paths.is_empty() {
            self.add("update_mask", "is required: name the fields to change");
        }
        if paths.len() > MAX_MASK_PATHS {
            self.add(
                "update_mask",
                format!("names {} paths; at most {MAX_MASK_PATHS}", paths.len()),
            );
            return Vec::new();
        }
        let mut seen = std::collections::HashSet::with_capacity(paths.len());
        paths
            .iter()
            .enumerate()
            .filter(|(_, path)| seen.insert(path.as_str()))
            .map(|(i, path)| (i, path.clone()))
            .collect()
    }

    /// An optional timestamp: absent, or valid as `required_time` says.
    pub fn optional_time(
        &mut self,
        field: &str,
        value: Option<&prost_types::Timestamp>,
    ) -> Option<DateTime<Utc>> {
        value.and_then(|ts| self.required_time(field, Some(ts)))
    }

    /// A number that must be finite (not NaN or infinite).
    pub fn finite(&mut self, field: &str, value: f64) -> f64 {
        if !value.is_finite() {
            self.add(field, "must be a finite number");
        }
        value
    }

    /// A report's window, `start_time` (inclusive) to `end_time`
    /// (exclusive), both required and the end after the start, as bounds
    /// over times recorded in milliseconds: each rounded up to a whole
    /// millisecond, so a record at .276 is before an end at .2769 and not
    /// after a start at .276000001, as written. (0, 0) when refused.
    pub fn window(
        &mut self,
        start: Option<&prost_types::Timestamp>,
        end: Option<&prost_types::Timestamp>,
    ) -> (i64, i64) {
        let start = self.required_time("start_time", start);
        let end = self.required_time("end_time", end);
        match (start, end) {
            (Some(start), Some(end)) if start < end => (ceil_millis(start), ceil_millis(end)),
            (Some(_), Some(_)) => {
                self.add("end_time", "must be after start_time");
                (0, 0)
            }
            _ => (0, 0),
        }
    }

    /// An engaged threshold as written: not below 0 (finite is checked
    /// with the pair, `thresholds`, or by the caller). Engagement
    /// above it makes an account ENGAGED, and rules can take points away,
    /// so a negative threshold would engage accounts whose engagement is
    /// only a loss (an unsubscribe). Checked where the threshold is
    /// written, not over a tenant's values in force, so that settings
    /// stored before this rule can still be edited.
    pub fn engaged_threshold(&mut self, field: &str, value: f64) -> f64 {
        if value.is_finite() && value < 0.0 {
            self.add(field, "must be 0 or more");
        }
        value
    }

    /// Stage thresholds: each finite, and `prioritized` above `engaged`
    /// (the same rule, and the same answer, wherever thresholds are given).
    /// `prefix` is the message holding both (`settings.`, `thresholds.`).
    /// A clash is blamed on the threshold the caller wrote: an engaged
    /// threshold written alone, above the prioritized one in force, is
    /// what is wrong, not the value the caller left alone.
    pub fn thresholds(&mut self, prefix: &str, engaged: f64, prioritized: f64, written: Written) {
        let engaged_ok = engaged.is_finite();
        let prioritized_ok = prioritized.is_finite();
        self.finite(&format!("{prefix}engaged_threshold"), engaged);
        self.finite(&format!("{prefix}prioritized_threshold"), prioritized);
        if engaged_ok && prioritized_ok && prioritized <= engaged {
            match written {
                Written::Engaged => self.add(
                    format!("{prefix}engaged_threshold"),
                    format!("must be less than the prioritized threshold ({prioritized})"),
                ),
                Written::Prioritized | Written::Both => self.add(
                    format!("{prefix}prioritized_threshold"),
                    format!("must be greater than the engaged threshold ({engaged})"),
                ),
            }
        }
    }

    pub fn finish(mut self) -> Result<(), ServiceError> {
        // First, so the status (which carries the first ten) says how many.
        if self.omitted > 0 {
            self.violations.insert(
                0,
                FieldViolation::new(
                    "request",
                    format!("has {} violations in all", MAX_KEPT + self.omitted),
                ),
            );
        }
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::InvalidArgument(self.violations))
        }
    }
}

/// Which of a pair of stage thresholds a request wrote (`Validator::thresholds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Engaged,
    Prioritized,
    Both,
}

/// `time` in whole milliseconds, rounded up.
fn ceil_millis(time: DateTime<Utc>) -> i64 {
    let ms = time.timestamp_millis();
    if time.timestamp_subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms + 1
    }
}

/// The paths of a required, non-empty update mask, each once, with its
/// position in the request: a violation about a path names it exactly
/// (`mask_path(i)`).
pub fn mask_paths(
    mask: Option<&prost_types::FieldMask>,
) -> Result<Vec<(usize, String)>, ServiceError> {
    let mut v = Validator::new();
    let paths = v.mask_paths(mask);
    v.finish()?;
    Ok(paths)
}

/// The exact field path of the `index`th path of `update_mask`.
pub fn mask_path(index: usize) -> String {
    format!("update_mask.paths[{index}]")
}

/// The description for a mask path that names no writable field: the
/// caller's text shown briefly, so the list of writable fields is never cut.
pub fn not_writable(path: &str, writable: &[&str]) -> String {
    format!(
        "{:?} is not a writable field; writable: {}",
        shown(path),
        writable.join(", ")
    )
}

/// Caller text quoted in a description: at most 64 characters (the
/// status stays small, and the service's own words around it stay whole).
pub fn shown(text: &str) -> String {
    const MAX_SHOWN: usize = 64;
    match text.char_indices().nth(MAX_SHOWN) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// The domain of an email address, if the address is well formed.
pub fn email_domain(email: &str) -> Option<&str> {
    let (local, domain) = email.rsplit_once('@')?;
    // Dots are not checked against RFC 5322's dot-atom: addresses such as
    // `taro..x@` exist (older mobile carriers), were stored before, and a
    // stricter rule would refuse their activities and lookups.
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '@' && c != ',');
    (local_ok && is_domain(domain)).then_some(domain)
}

/// What a text field holds: one line (a name, an id) or prose (a note).
#[derive(Clone, Copy)]
enum Text {
    Line,
    Prose,
}

/// Text with nothing visible: white space and the invisible format
/// characters a copy from a web page or a spreadsheet brings along (a
/// zero-width space, joiners, a byte-order mark), so that a name made of
/// them alone is missing rather than an invisible name. Text with something
/// visible is kept as it came (trimmed of white space only): an id a caller
/// sent before this rule (`request_id`, `event_id`, `external_id`) must
/// still match itself.
fn is_blank(value: &str) -> bool {
    value.chars().all(|c| {
        c.is_whitespace()
            || matches!(
                c,
                '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}'
            )
    })
}

/// A DNS name of at least two labels whose top-level label is not all
/// digits (RFC 3696 section 2), so an address such as "1.2" or "10.0.0.1"
/// is not taken for a domain.
fn is_domain(value: &str) -> bool {
    value.len() <= 253
        && value.contains('.')
        && value
            .rsplit('.')
            .next()
            .is_some_and(|top| !top.bytes().all(|b| b.is_ascii_digit()))
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_violation() {
        let mut v = Validator::new();
        v.required_text("account.name", "   ", 10);
        v.required_text("account.owner_id", "far too long a value", 10);
        v.optional_domain("account.domain", "not a domain");
        let error = v.finish().expect_err("three violations");
        let ServiceError::InvalidArgument(violations) = error else {
            panic!("wrong kind")
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["account.name", "account.owner_id", "account.domain"]
        );
    }

    #[test]
    fn a_flood_of_violations_is_counted_past_the_kept() {
        let mut v = Validator::new();
        for i in 0..MAX_KEPT + 5 {
            v.add(format!("ids[{i}]"), "must be a UUID");
        }
        let Err(ServiceError::InvalidArgument(violations)) = v.finish() else {
            panic!("refused")
        };
        assert_eq!(violations.len(), MAX_KEPT + 1);
        assert_eq!(
            (
                violations[0].field.as_str(),
                violations[0].description.as_str()
            ),
            ("request", "has 1005 violations in all")
        );
        assert_eq!(violations[1].field, "ids[0]");
        assert_eq!(violations[MAX_KEPT].field, format!("ids[{}]", MAX_KEPT - 1));
    }

    #[test]
    fn mask_paths_are_kept_once_in_order_and_bounded() {
        let mask = |paths: Vec<String>| prost_types::FieldMask { paths };
        let paths =
            mask_paths(Some(&mask(vec!["b".into(), "a".into(), "b".into()]))).expect("valid");
        assert_eq!(paths, [(0, "b".to_owned()), (1, "a".to_owned())]);
        // Seven hundred thousand distinct paths: refused by their number,
        // at once (a pairwise comparison took minutes of a worker).
        let many = (0..700_000).map(|i| format!("p{i}")).collect();
        let Err(ServiceError::InvalidArgument(violations)) = mask_paths(Some(&mask(many))) else {
            panic!("refused")
        };
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "update_mask");
        assert_eq!(violations[0].description, "names 700000 paths; at most 100");
    }

    #[test]
    fn prose_keeps_line_breaks_and_tabs_a_line_does_not() {
        let note = "Uses spreadsheets.\r\nTwo teams:\n\t- sales";
        let mut v = Validator::new();
        assert_eq!(v.optional_prose("needs", note, 100).as_deref(), Some(note));
        assert_eq!(
            v.required_prose("reason", " Price.\nRival. ", 100),
            "Price.\nRival."
        );
        assert!(v.is_valid());
        let mut v = Validator::new();
        v.optional_prose("needs", "a bell \u{7}", 100);
        v.optional_text("name", "two\nlines", 100);
        let Err(ServiceError::InvalidArgument(violations)) = v.finish() else {
            panic!("both refused")
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["needs", "name"]);
    }

    #[test]
    fn a_blank_filter_is_refused_an_empty_one_is_no_filter() {
        let mut v = Validator::new();
        v.filter_not_blank("owner_id", "");
        v.filter_not_blank("owner_id", "jane");
        assert!(v.is_valid());
        for blank in [" ", "\t", "\u{200B}"] {
            let mut v = Validator::new();
            v.filter_not_blank("owner_id", blank);
            let Err(ServiceError::InvalidArgument(violations)) = v.finish() else {
                panic!("{blank:?} refused")
            };
            assert_eq!(violations[0].field, "owner_id");
        }
    }

    #[test]
    fn a_blank_request_id_is_refused_an_empty_one_is_none() {
        let mut v = Validator::new();
        assert_eq!(v.request_id("request_id", ""), None);
        assert_eq!(v.request_id("request_id", " r-1 "), Some("r-1".into()));
        assert!(v.is_valid());
        for blank in ["   ", "\t", "\u{200B}"] {
            let mut v = Validator::new();
            assert_eq!(v.request_id("request_id", blank), None);
            let Err(ServiceError::InvalidArgument(violations)) = v.finish() else {
                panic!("{blank:?} refused")
            };
            assert_eq!(violations[0].field, "request_id");
            assert!(violations[0].description.starts_with("must not be blank"));
        }
    }

    #[test]
    fn emails_and_domains() {
        assert_eq!(email_domain("jane@acme.com"), Some("acme.com"));
        assert_eq!(email_domain("jane@sub.acme.co.uk"), Some("sub.acme.co.uk"));
        for bad in [
            "jane",
            "@acme.com",
            "jane@",
            "jane@acme",
            "ja ne@acme.com",
            "jane@10.0.0.1",
        ] {
            assert_eq!(email_domain(bad), None, "{bad}");
        }
        // A top-level label of digits is an address, not a domain; digits
        // elsewhere (or mixed in the top label) are fine.
        for (domain, valid) in [
            ("1.2", false),
            ("10.0.0.1", false),
            ("acme.123", false),
            ("123.acme.com", true),
            ("acme.x1", true),
        ] {
            let mut v = Validator::new();
            v.optional_domain("d", domain);
            assert_eq!(v.is_valid(), valid, "{domain}");
        }
        let mut v = Validator::new();
        assert_eq!(
            v.optional_domain("d", " Acme.COM. "),
            Some("acme.com".to_owned())
        );
        assert_eq!(v.optional_email("e", ""), None);
        assert_eq!(
            v.optional_email("e", "Jane.Doe@Acme.com."),
            Some("jane.doe@acme.com".to_owned())
        );
        assert!(v.is_valid());
    }

    /// A text of invisible characters alone is missing, not an invisible
    /// name; a text with something visible is kept as it came (an id sent
    /// with a byte-order mark before must still match itself).
    #[test]
    fn invisible_text_is_missing() {
        let mut v = Validator::new();
        assert_eq!(
            v.required_text("name", " \u{FEFF}Acme\u{200B} ", 10),
            "\u{FEFF}Acme\u{200B}"
        );
        assert_eq!(v.optional_text("notes", "\u{200B}\u{2060} ", 10), None);
        assert_eq!(v.required_text("name", "A\u{200D}B", 10), "A\u{200D}B");
        assert!(v.is_valid());
        v.required_text("account.name", "\u{200B}", 10);
        let error = v.finish().expect_err("an invisible name");
        assert!(error.to_string().contains("account.name"), "{error}");
    }

    /// A window's bounds as written, over times kept in milliseconds.
    #[test]
    fn a_window_keeps_what_lies_inside_it_as_written() {
        let at = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        let mut v = Validator::new();
        // A record at 1.276 s: after a start at 1.276000001 s? No; before an
        // end at 1.2769 s? Yes.
        let (start, end) = v.window(at(1, 276_000_001).as_ref(), at(1, 276_900_000).as_ref());
        assert_eq!((start, end), (1_277, 1_277));
        let (start, end) = v.window(at(1, 276_000_000).as_ref(), at(2, 0).as_ref());
        assert!((start..end).contains(&1_276));
        assert!(v.is_valid());
        v.window(at(2, 0).as_ref(), at(2, 0).as_ref());
        let error = v.finish().expect_err("an empty window");
        assert!(error.to_string().contains("end_time"), "{error}");
    }

    #[test]
    fn ids_must_be_uuids() {
        let mut v = Validator::new();
        v.required_id("account_id", "0192f0c4-8b6e-7cc2-9d7e-7d1c7f3b5a10");
        assert!(v.is_valid());
        v.required_id("account_id", "42");
        assert!(!v.is_valid());
    }

    /// Every form of a UUID becomes the stored form, so it compares with
    /// stored ids as text (a page cursor does).
    #[test]
    fn ids_take_the_stored_form() {
        let stored = "0192f0c4-8b6e-7cc2-9d7e-7d1c7f3b5a10";
        let mut v = Validator::new();
        for form in [
            stored.to_owned(),
            stored.to_ascii_uppercase(),
            stored.replace('-', ""),
            format!("{{{stored}}}"),
            format!("urn:uuid:{stored}"),
        ] {
            assert_eq!(v.required_id("id", &form), stored, "{form}");
            assert_eq!(
                v.optional_id("id", &form).as_deref(),
                Some(stored),
                "{form}"
            );
        }
        assert_eq!(v.optional_id("id", "  "), None);
        assert!(v.is_valid());
    }
}
