//! Who an activity is about, checked with lifecycle, which owns accounts and
//! contacts: every account and contact an activity names must exist in the
//! caller's tenant and belong together, and an email must name a contact (or
//! a new one is created under the account of its domain).
//!
//! A contact no longer at the company (DeactivateContact) is refused: its
//! activities are not recorded.
//!
//! A batch costs at most one call to lifecycle (BatchResolveContacts), and
//! none when every person in it was checked before: checked (account,
//! contact) pairs are remembered without expiry, since a contact never
//! changes account, and resolved emails for `email_cache_ttl_ms`, since an
//! email can be given to another contact. Both sit in one bounded cache
//! (`directory_cache_entries`), with whether the contact is inactive; a
//! contact whose status or email changes is forgotten (`forget_contacts`)
//! by every replica (lifecycle records both for scoring), so its next
//! activity is checked again and an email given to another person resolves
//! to them within about two polls; the TTL bounds what a missed change leaves. An erasure makes every
//! replica forget everything: each hears of it while it settles
//! (`chassis::erasure`), and what a replica remembers is trusted only for
//! half of `erasure_settle_ms` after its last complete poll of erasures
//! ([`Heard`]), so one that stopped hearing asks lifecycle instead.
//! docs/decisions.md has the trade-offs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cascade_chassis::client::LifecycleClientSettings;
use cascade_chassis::client::{
    CALL_DEADLINE, LifecycleClient, outgoing_for, peer_failure, with_deadline,
};
use cascade_chassis::{RequestContext, ServiceError, ServiceResult};
use cascade_proto::lifecycle::v1 as lifecycle;
use quick_cache::Equivalent;
use quick_cache::sync::Cache;

use crate::storage::ChangedContact;

/// Who an activity is about, as the caller gave it (validated).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Person {
    Ids {
        account_id: String,
        contact_id: Option<String>,
    },
    Email(String),
}

/// What the directory says of one person.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {
    Found {
        account_id: String,
        contact_id: Option<String>,
    },
    /// Names nothing in the tenant; `field` is the activity's field at fault
    /// (`account_id`, `contact_id` or `contact_email`).
    NotFound {
        field: &'static str,
        description: String,
    },
    /// A contact named under an account it does not belong to.
    Mismatch {
        field: &'static str,
        description: String,
    },
    /// A contact no longer at the company (DeactivateContact); `field` is
    /// the activity's field that named it (`contact_id` or `contact_email`).
    Inactive {
        field: &'static str,
        account_id: String,
        contact_id: String,
    },
}

/// A cache entry's key: the tenant first, then a checked pair (account,
/// contact or "") or an email.
#[derive(PartialEq, Eq)]
enum Key {
    Pair(String, String, String),
    Email(String, String),
}

/// Hashed as its borrowed form, so that a lookup by [`KeyRef`] finds it.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Self::Pair(tenant, account, contact) => KeyRef::Pair(tenant, account, contact),
            Self::Email(tenant, email) => KeyRef::Email(tenant, email),
        }
        .hash(state);
    }
}

/// A [`Key`] borrowed from an activity, so that a lookup allocates nothing.
#[derive(Hash)]
enum KeyRef<'a> {
    Pair(&'a str, &'a str, &'a str),
    Email(&'a str, &'a str),
}

impl<'a> KeyRef<'a> {
    fn of(tenant: &'a str, person: &'a Person) -> Self {
        match person {
            Person::Ids {
                account_id,
                contact_id,
            } => Self::Pair(
                tenant,
                account_id,
                contact_id.as_deref().unwrap_or_default(),
            ),
            Person::Email(email) => Self::Email(tenant, email),
        }
    }

    fn owned(&self) -> Key {
        match *self {
            Self::Pair(tenant, account, contact) => {
                Key::Pair(tenant.into(), account.into(), contact.into())
            }
            Self::Email(tenant, email) => Key::Email(tenant.into(), email.into()),
        }
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        match (self, key) {
            (Self::Pair(t, a, c), Key::Pair(kt, ka, kc)) => t == kt && a == ka && c == kc,
            (Self::Email(t, e), Key::Email(kt, ke)) => t == kt && e == ke,
            _ => false,
        }
    }
}

#[derive(Clone)]
enum Remembered {
    /// An (account, contact) pair lifecycle confirmed.
    Pair { inactive: bool },
    /// What an email resolved to, and when.
    Email {
        account_id: String,
        contact_id: String,
        inactive: bool,
        at: Instant,
    },
}

/// Where one person's answer comes from, in `Directory::check`.
enum Known {
    Remembered(Remembered),
    /// The index of the person's reference in the call to lifecycle.
    Asked(usize),
}

/// When this replica last heard of every pending erasure (the start of its
/// last complete poll), and how long what it remembers is trusted after.
/// The directory's creation counts as such a poll: it remembers nothing yet,
/// and lifecycle answers every later check after any erasure made before.
///
/// Why it is enough: an erasure is confirmed (and so no longer listed) only
/// after it settled for `erasure_settle_ms` = 2 × `trust` on the confirming
/// replica. So a replica that trusts its memory now either polled while the
/// erasure was pending (and forgot), or its last two polls lie more than
/// `trust` apart, and a poll after such a gap forgets everything.
#[derive(Clone)]
struct Heard {
    origin: Instant,
    /// Microseconds from `origin` to the last complete poll's start.
    last: Arc<AtomicU64>,
    trust: Duration,
}

impl Heard {
    fn new(trust: Duration) -> Self {
        Self {
            origin: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
            trust,
        }
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_micros(self.last.load(Ordering::SeqCst))
    }

    /// Whether what is remembered may answer at `now`.
    fn trusted_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last()) < self.trust
    }

    /// Whether a poll that started at `started` follows a gap: erasures may
    /// have come and gone unheard meanwhile.
    fn gap_before(&self, started: Instant) -> bool {
        started.saturating_duration_since(self.last()) >= self.trust
    }

    fn set(&self, started: Instant) {
        let micros = started.saturating_duration_since(self.origin).as_micros();
        let micros = u64::try_from(micros).unwrap_or(u64::MAX);
        self.last.fetch_max(micros, Ordering::SeqCst);
    }
}

/// Cheap to clone: clones share the cache.
#[derive(Clone)]
pub struct Directory {
    lifecycle: LifecycleClient,
    cache: Option<Arc<Cache<Key, Remembered>>>,
    email_ttl: Duration,
    /// Bumped by every forget, before it removes anything: an answer asked
    /// for before a forget may predate the change, and is not remembered.
    forgets: Arc<AtomicU64>,
    heard: Heard,
}

impl Directory {
    pub fn new(lifecycle: LifecycleClient, settings: &LifecycleClientSettings) -> Self {
        let entries = usize::try_from(settings.directory_cache_entries).unwrap_or(usize::MAX);
        Self {
            lifecycle,
            cache: (entries > 0).then(|| Arc::new(Cache::new(entries))),
            email_ttl: Duration::from_millis(settings.email_cache_ttl_ms),
            forgets: Arc::new(AtomicU64::new(0)),
            heard: Heard::new(Duration::from_millis(settings.erasure_settle_ms / 2)),
        }
    }

    /// A poll that started at `started` heard of every pending erasure (and
    /// this replica forgot everything for each it saw first). After a gap
    /// it forgets everything too: an erasure may have settled unheard.
    pub fn heard_all(&self, started: Instant) {
        if self.heard.gap_before(started) {
            self.forget_everything();
        }
        self.heard.set(started);
    }

    /// Forgets every checked pair and resolved email. After an erasure: a
    /// remembered pair would let an activity name the erased contact without
    /// asking lifecycle. Erasures are rare, and the cache refills from one
    /// call per batch.
    pub fn forget_everything(&self) {
        if let Some(cache) = &self.cache {
            self.forgets.fetch_add(1, Ordering::SeqCst);
            cache.clear();
        }
    }

    /// Forgets what was checked of these contacts (marked inactive or active
    /// again, or given another email), so their next activities are checked
    /// with lifecycle. The emails are found by a pass over the cache: such
    /// changes are rare (a bulk change of emails, a domain moving, costs a
    /// pass per poll's changes; not measured).
    pub fn forget_contacts(&self, contacts: &[ChangedContact]) {
        let Some(cache) = &self.cache else { return };
        if contacts.is_empty() {
            return;
        }
        self.forgets.fetch_add(1, Ordering::SeqCst);
        let mut changed = HashSet::with_capacity(contacts.len());
        for c in contacts {
            cache.remove(&KeyRef::Pair(&c.tenant_id, &c.account_id, &c.contact_id));
            changed.insert((c.tenant_id.as_str(), c.contact_id.as_str()));
        }
        cache.retain(|key, remembered| match (key, remembered) {
            (Key::Email(tenant, _), Remembered::Email { contact_id, .. }) => {
                !changed.contains(&(tenant.as_str(), contact_id.as_str()))
            }
            _ => true,
        });
    }

    /// Checks `people` (one answer each, in order) with at most one call to
    /// lifecycle, bounded by the caller's deadline. When lifecycle cannot
    /// answer, the whole check fails UNAVAILABLE: a person that could not be
    /// checked is never reported as unknown. A remembered pair answers with
    /// the person's own ids, moved, not copied. Nothing remembered answers
    /// while this replica has not heard of erasures lately.
    pub async fn check(
        &self,
        context: &RequestContext,
        people: Vec<Person>,
    ) -> ServiceResult<Vec<Checked>> {
        let tenant = context.tenant.as_str();
        let trusted = self.heard.trusted_at(Instant::now());
        // Each person's answer is remembered, or asked for: each person
        // once, one reference per distinct person.
        let mut asked: HashMap<&Person, usize> = HashMap::new();
        let mut references = Vec::new();
        let known: Vec<Known> = people
            .iter()
            .map(
                |person| match self.remembered(tenant, person).filter(|_| trusted) {
                    Some(remembered) => Known::Remembered(remembered),
                    None => Known::Asked(*asked.entry(person).or_insert_with(|| {
                        references.push(reference_of(person));
                        references.len() - 1
                    })),
                },
            )
            .collect();
        let asked_at = self.forgets.load(Ordering::SeqCst);
        let resolutions = if references.is_empty() {
            Vec::new()
        } else {
            self.ask(context, references).await?
        };
        Ok(people
            .into_iter()
            .zip(known)
            .map(|(person, known)| match known {
                Known::Remembered(remembered) => answer(person, remembered),
                Known::Asked(slot) => {
                    let checked = checked(&resolutions[slot], &person);
                    self.remember(tenant, &person, &checked, asked_at);
                    checked
                }
            })
            .collect())
    }

    /// Whether checking `person` would ask lifecycle: an email nobody
    /// remembers, which lifecycle may answer by creating a contact.
    pub fn would_create(&self, context: &RequestContext, person: &Person) -> bool {
        matches!(person, Person::Email(_))
            && !(self.heard.trusted_at(Instant::now())
                && self.remembered(context.tenant.as_str(), person).is_some())
    }

    async fn ask(
        &self,
        context: &RequestContext,
        references: Vec<lifecycle::ContactReference>,
    ) -> ServiceResult<Vec<lifecycle::ContactResolution>> {
        let count = references.len();
        let budget = answer_budget(context);
        let mut request = outgoing_for(
            context,
            lifecycle::BatchResolveContactsRequest { references },
        );
        request.set_timeout(budget);
        let mut client = self.lifecycle.clone();
        let resolutions = match with_deadline(budget, client.batch_resolve_contacts(request)).await
        {
            Ok(response) => response.into_inner().resolutions,
            Err(status) => {
                return Err(peer_failure(
                    "lifecycle",
                    "check the activities' accounts and contacts",
                    "no activity was written",
                    &status,
                ));
            }
        };
        if resolutions.len() != count {
            return Err(ServiceError::Unavailable(format!(
                "lifecycle answered {} resolutions for {count} references; no activity was written; retry",
                resolutions.len()
            )));
        }
        Ok(resolutions)
    }

    /// What is remembered of `person`, if it still holds (a resolved email
    /// for `email_ttl`): a pair for ids, an email for an email.
    fn remembered(&self, tenant: &str, person: &Person) -> Option<Remembered> {
        let remembered = self.cache.as_ref()?.get(&KeyRef::of(tenant, person))?;
        match (person, &remembered) {
            (Person::Ids { .. }, Remembered::Pair { .. }) => Some(remembered),
            (Person::Email(_), Remembered::Email { at, .. }) if at.elapsed() < self.email_ttl => {
                Some(remembered)
            }
            _ => None,
        }
    }

    /// Only what exists is remembered (an unknown id may be created a moment
    /// later), inactive contacts included: a caller that keeps sending their
    /// activities costs no call to lifecycle each time. Nothing is remembered
    /// when a forget (an erasure, a status change) came since the answer was
    /// asked for at `asked_at`: the answer may predate it, and a pair is kept
    /// without expiry.
    fn remember(&self, tenant: &str, person: &Person, checked: &Checked, asked_at: u64) {
        let Some(cache) = &self.cache else { return };
        let (account_id, contact_id, inactive) = match checked {
            Checked::Found {
                account_id,
                contact_id,
            } => (account_id, contact_id.as_ref(), false),
            Checked::Inactive {
                account_id,
                contact_id,
                ..
            } => (account_id, Some(contact_id), true),
            Checked::NotFound { .. } | Checked::Mismatch { .. } => return,
        };
        let value = match (person, contact_id) {
            (Person::Ids { .. }, _) => Remembered::Pair { inactive },
            (Person::Email(_), Some(contact_id)) => Remembered::Email {
                account_id: account_id.clone(),
                contact_id: contact_id.clone(),
                inactive,
                at: Instant::now(),
            },
            (Person::Email(_), None) => return,
        };
        let key = KeyRef::of(tenant, person);
        cache.insert(key.owned(), value);
        // Checked after the insert: a forget that bumped before it but
        // removed before it is seen here, one that removes after it removes it.
        if self.forgets.load(Ordering::SeqCst) != asked_at {
            cache.remove(&key);
        }
    }
}

/// The answer for `person` from what [`Directory::remembered`] found.
fn answer(person: Person, remembered: Remembered) -> Checked {
    match (person, remembered) {
        (
            Person::Ids {
                account_id,
                contact_id,
            },
            Remembered::Pair { inactive },
        ) => found_or_inactive(account_id, contact_id, inactive, "contact_id"),
        (
            Person::Email(_),
            Remembered::Email {
                account_id,
                contact_id,
                inactive,
                ..
            },
        ) => found_or_inactive(account_id, Some(contact_id), inactive, "contact_email"),
        (Person::Email(_), Remembered::Pair { .. })
        | (Person::Ids { .. }, Remembered::Email { .. }) => {
            unreachable!("remembered() finds a pair only for ids, an email only for an email")
        }
    }
}

/// A remembered person: found, or refused as inactive naming `field`.
fn found_or_inactive(
    account_id: String,
    contact_id: Option<String>,
    inactive: bool,
    field: &'static str,
) -> Checked {
    match contact_id {
        Some(contact_id) if inactive => Checked::Inactive {
            field,
            account_id,
            contact_id,
        },
        contact_id => Checked::Found {
            account_id,
            contact_id,
        },
    }
}

fn reference_of(person: &Person) -> lifecycle::ContactReference {
    match person {
        Person::Ids {
            account_id,
            contact_id,
        } => lifecycle::ContactReference {
            account_id: account_id.clone(),
            contact_id: contact_id.clone().unwrap_or_default(),
            email: String::new(),
        },
        Person::Email(email) => lifecycle::ContactReference {
            email: email.clone(),
            ..Default::default()
        },
    }
}

/// Lifecycle's answer in the activity's terms (its `email` is the
/// activity's `contact_email`) for `person`.
fn checked(resolution: &lifecycle::ContactResolution, person: &Person) -> Checked {
    use lifecycle::ResolutionStatus as S;
    let field = match resolution.field.as_str() {
        "email" => "contact_email",
        "contact_id" => "contact_id",
        _ => "account_id",
    };
    let description = resolution.description.clone();
    match S::try_from(resolution.status) {
        // Only an existing contact can be inactive (a created one is new).
        Ok(S::Resolved)
            if resolution.contact_inactive
                && !resolution.account_id.is_empty()
                && !resolution.contact_id.is_empty() =>
        {
            Checked::Inactive {
                field: match person {
                    Person::Email(_) => "contact_email",
                    Person::Ids { .. } => "contact_id",
                },
                account_id: resolution.account_id.clone(),
                contact_id: resolution.contact_id.clone(),
            }
        }
        Ok(S::Resolved | S::Created) if !resolution.account_id.is_empty() => Checked::Found {
            account_id: resolution.account_id.clone(),
            contact_id: (!resolution.contact_id.is_empty()).then(|| resolution.contact_id.clone()),
        },
        Ok(S::Mismatch) => Checked::Mismatch { field, description },
        Ok(S::NotFound) => Checked::NotFound { field, description },
        // An answer this version does not know: treated as unknown, so
        // nothing is stored on it.
        _ => Checked::NotFound {
            field,
            description: "lifecycle gave no usable answer for this reference".into(),
        },
    }
}

/// How long the call to lifecycle may take: the service-to-service limit, or
/// less, so that the answer reaches a caller with a nearer deadline before
/// it expires (a tenth of what is left, at most 100 ms, is kept for that).
fn answer_budget(context: &RequestContext) -> Duration {
    let budget = context.call_budget(CALL_DEADLINE);
    if context.deadline.is_none() {
        return budget;
    }
    budget.saturating_sub((budget / 10).min(Duration::from_millis(100)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolution(
        status: lifecycle::ResolutionStatus,
        field: &str,
    ) -> lifecycle::ContactResolution {
        lifecycle::ContactResolution {
            status: status as i32,
            account_id: if field.is_empty() {
                "a1".into()
            } else {
                String::new()
            },
            contact_id: if field.is_empty() {
                "c1".into()
            } else {
                String::new()
            },
            field: field.into(),
            description: "why".into(),
            contact_inactive: false,
        }
    }

    fn ids() -> Person {
        Person::Ids {
            account_id: "a1".into(),
            contact_id: Some("c1".into()),
        }
    }

    #[test]
    fn lifecycle_fields_map_onto_the_activitys() {
        use lifecycle::ResolutionStatus as S;
        let found = Checked::Found {
            account_id: "a1".into(),
            contact_id: Some("c1".into()),
        };
        assert_eq!(checked(&resolution(S::Resolved, ""), &ids()), found);
        assert_eq!(checked(&resolution(S::Created, ""), &ids()), found);
        let cases = [
            (S::NotFound, "email", "contact_email", false),
            (S::NotFound, "account_id", "account_id", false),
            (S::NotFound, "contact_id", "contact_id", false),
            (S::Mismatch, "contact_id", "contact_id", true),
        ];
        for (status, field, expected, mismatch) in cases {
            match checked(&resolution(status, field), &ids()) {
                Checked::NotFound { field, .. } if !mismatch => assert_eq!(field, expected),
                Checked::Mismatch { field, .. } if mismatch => assert_eq!(field, expected),
                other => panic!("{status:?} {field}: {other:?}"),
            }
        }
        // A status this version does not know stores nothing.
        assert!(matches!(
            checked(&resolution(S::Unspecified, ""), &ids()),
            Checked::NotFound { .. }
        ));
    }

    #[test]
    fn an_inactive_contact_is_refused_naming_the_field_that_named_it() {
        use lifecycle::ResolutionStatus as S;
        let inactive = lifecycle::ContactResolution {
            contact_inactive: true,
            ..resolution(S::Resolved, "")
        };
        let email = Person::Email("ann@a.example".into());
        for (person, field) in [(ids(), "contact_id"), (email, "contact_email")] {
            assert_eq!(
                checked(&inactive, &person),
                Checked::Inactive {
                    field,
                    account_id: "a1".into(),
                    contact_id: "c1".into(),
                }
            );
        }
    }

    /// A directory whose lifecycle refuses connections.
    fn directory() -> Directory {
        let settings = LifecycleClientSettings {
            url: "http://127.0.0.1:9".into(),
            erasure_settle_ms: 2_000,
            ..LifecycleClientSettings::default()
        };
        let (client, _) = cascade_chassis::client::lifecycle_clients(
            &settings,
            &cascade_chassis::auth::AuthSettings::default(),
            &cascade_chassis::tls::TlsSettings::default(),
            "scoring",
        )
        .unwrap_or_else(|e| panic!("clients: {e}"));
        Directory::new(client, &settings)
    }

    /// What is remembered carries the inactive flag, and a status change
    /// forgets the contact under every name it was checked by.
    #[tokio::test]
    async fn remembered_people_carry_the_flag_until_forgotten() {
        let directory = directory();
        let email = Person::Email("ann@a.example".into());
        let refused = |field| Checked::Inactive {
            field,
            account_id: "a1".into(),
            contact_id: "c1".into(),
        };
        let now = directory.forgets.load(Ordering::SeqCst);
        directory.remember("t", &ids(), &refused("contact_id"), now);
        directory.remember("t", &email, &refused("contact_email"), now);
        let other = Person::Ids {
            account_id: "a1".into(),
            contact_id: Some("c2".into()),
        };
        let found = Checked::Found {
            account_id: "a1".into(),
            contact_id: Some("c2".into()),
        };
        directory.remember("t", &other, &found, now);
        let recall = |tenant, person: &Person| {
            let remembered = directory.remembered(tenant, person)?;
            Some(answer(person.clone(), remembered))
        };
        assert_eq!(recall("t", &ids()), Some(refused("contact_id")));
        assert_eq!(recall("t", &email), Some(refused("contact_email")));
        assert_eq!(recall("u", &ids()), None, "another tenant");

        directory.forget_contacts(&[ChangedContact {
            tenant_id: "t".into(),
            account_id: "a1".into(),
            contact_id: "c1".into(),
        }]);
        assert_eq!(recall("t", &ids()), None);
        assert_eq!(recall("t", &email), None);
        assert_eq!(recall("t", &other), Some(found));
    }

    /// An answer asked for before a forget (a status change, an erasure) is
    /// not remembered: it may predate the change, and a pair never expires.
    /// One asked for after it is.
    #[tokio::test]
    async fn an_answer_older_than_a_forget_is_not_remembered() {
        let directory = directory();
        let found = Checked::Found {
            account_id: "a1".into(),
            contact_id: Some("c1".into()),
        };
        let recall = |person: &Person| directory.remembered("t", person).is_some();
        let changed = ChangedContact {
            tenant_id: "t".into(),
            account_id: "a1".into(),
            contact_id: "c1".into(),
        };
        let forgets: [&dyn Fn(); 2] = [
            &|| directory.forget_contacts(std::slice::from_ref(&changed)),
            &|| directory.forget_everything(),
        ];
        for forget in forgets {
            let asked_at = directory.forgets.load(Ordering::SeqCst);
            forget();
            directory.remember("t", &ids(), &found, asked_at);
            assert!(!recall(&ids()), "asked before the forget");
            let asked_at = directory.forgets.load(Ordering::SeqCst);
            directory.remember("t", &ids(), &found, asked_at);
            assert!(recall(&ids()), "asked after it");
            directory.forget_everything();
        }
    }

    /// What is remembered answers only for `trust` after the start of the
    /// last complete poll of erasures (or the directory's creation); a poll
    /// after a gap of `trust` or more is told to forget everything.
    #[test]
    fn remembered_answers_are_trusted_while_erasures_are_heard() {
        let trust = Duration::from_secs(10);
        let heard = Heard::new(trust);
        let t0 = heard.origin;
        // Created: as if it had just heard (it remembers nothing yet).
        assert!(heard.trusted_at(t0 + trust / 2));
        assert!(
            !heard.trusted_at(t0 + trust),
            "no poll since it was created"
        );
        assert!(!heard.gap_before(t0 + trust / 2), "a first poll in time");
        assert!(heard.gap_before(t0 + trust), "a first poll after a gap");
        heard.set(t0);
        assert!(heard.trusted_at(t0 + trust / 2));
        assert!(!heard.trusted_at(t0 + trust), "stopped hearing");
        assert!(!heard.gap_before(t0 + trust / 2));
        heard.set(t0 + trust / 2);
        assert!(heard.trusted_at(t0 + trust));
        assert!(heard.gap_before(t0 + trust / 2 + trust));
        // A poll that started earlier does not move it back.
        heard.set(t0);
        assert!(heard.trusted_at(t0 + trust));
    }

    /// A remembered pair answers without lifecycle only while the replica
    /// hears of erasures: `trust` after its last poll (here, its creation),
    /// and after a poll that followed a gap, lifecycle is asked (here it
    /// cannot answer).
    #[tokio::test]
    async fn a_replica_that_has_not_heard_of_erasures_asks_lifecycle() {
        let found = Checked::Found {
            account_id: "a1".into(),
            contact_id: Some("c1".into()),
        };
        let context = RequestContext {
            tenant: cascade_chassis::TenantId::parse("t").expect("tenant"),
            actor: "test".into(),
            deadline: None,
            admin: false,
        };
        let asked_lifecycle = |result: ServiceResult<Vec<Checked>>| match result {
            Err(ServiceError::Unavailable(message)) => message.contains("lifecycle"),
            other => panic!("{other:?}"),
        };

        let mut directory = directory();
        directory.remember("t", &ids(), &found, 0);
        // Created `trust` ago (as far as the clock of the check goes).
        directory.heard.origin = Instant::now()
            .checked_sub(directory.heard.trust)
            .expect("the clock goes back that far");
        assert!(
            asked_lifecycle(directory.check(&context, vec![ids()]).await),
            "not heard since"
        );

        let directory = self::directory();
        directory.heard_all(Instant::now());
        directory.remember(
            "t",
            &ids(),
            &found,
            directory.forgets.load(Ordering::SeqCst),
        );
        assert_eq!(
            directory
                .check(&context, vec![ids()])
                .await
                .expect("remembered"),
            std::slice::from_ref(&found)
        );
        directory.heard_all(Instant::now() + directory.heard.trust);
        assert!(
            asked_lifecycle(directory.check(&context, vec![ids()]).await),
            "forgotten after a gap"
        );
    }

    /// A borrowed key finds what its owned key stored (same hash, equal),
    /// and keys keep tenants, kinds and fields apart.
    #[test]
    fn keys_find_their_own_entries_only() {
        use std::hash::BuildHasher;
        let ids = Person::Ids {
            account_id: "a".into(),
            contact_id: None,
        };
        let people = [
            ("t1", ids.clone()),
            ("t2", ids),
            ("t1", Person::Email("a".into())),
            (
                "t1",
                Person::Ids {
                    account_id: "a".into(),
                    contact_id: Some("c".into()),
                },
            ),
            (
                "t1",
                Person::Ids {
                    account_id: "ac".into(),
                    contact_id: None,
                },
            ),
        ];
        // The cache's own hasher.
        let hasher = quick_cache::DefaultHashBuilder::default();
        for (i, (tenant, person)) in people.iter().enumerate() {
            let borrowed = KeyRef::of(tenant, person);
            let owned = borrowed.owned();
            assert_eq!(hasher.hash_one(&borrowed), hasher.hash_one(&owned), "{i}");
            for (j, (other_tenant, other)) in people.iter().enumerate() {
                let matches = KeyRef::of(other_tenant, other).equivalent(&owned);
                assert_eq!(matches, i == j, "{i} against {j}");
            }
        }
    }
}
