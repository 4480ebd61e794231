//! GetAccount's answers kept in memory, per replica, keyed by the account
//! row's `version` (every write of the row moves it by one).
//!
//! A read answers from memory when this replica holds the account, and
//! otherwise from the database, keeping what it read. Nothing is kept for
//! longer than it is true:
//! - a write on this replica replaces the entry after its commit, with the
//!   account it wrote when it has it (`written`), so this replica's next read
//!   sees it;
//! - a write on any replica reaches the others through PostgreSQL's
//!   LISTEN/NOTIFY (a trigger on `accounts`, `listen_for_changes`), which
//!   leaves a tombstone: "version N exists, read it from the database";
//! - while this replica cannot hear those notifications (its listening
//!   connection lost, or not yet open) the cache answers nothing, and it
//!   starts empty again once it hears them.
//!
//! A read that raced a write cannot put back what the write replaced: an
//! entry never goes back to an older version, and a read may only fill an
//! empty slot if nothing was evicted or cleared since it began (a write
//! always leaves at least a tombstone, which only eviction removes).
//! docs/decisions.md ("GetAccount answers from a per-replica cache") has the
//! trade-offs.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Equivalent, Lifecycle, UnitWeighter};
use sea_orm::DatabaseConnection;
use sea_orm::sqlx::PgPool;
use sea_orm::sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::task::JoinHandle;

use crate::domain::Account;

/// The version a deleted (erased) account is kept at: nothing replaces it.
pub const ERASED: i64 = i64::MAX;

type Key = (String, String);

/// A tenant's account id, looked up without allocating a key.
struct Lookup<'a>(&'a str, &'a str);

impl Hash for Lookup<'_> {
    // As `(String, String)` hashes: each part in order.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl Equivalent<Key> for Lookup<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

#[derive(Clone)]
struct Slot {
    version: i64,
    /// `None`: a tombstone (this version exists; read it from the database).
    account: Option<Arc<Account>>,
}

/// Counts evictions, which fence the reads in flight (`Ticket`).
#[derive(Clone)]
struct Evictions(Arc<AtomicU64>);

impl Lifecycle<Key, Slot> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut Self::RequestState, _key: Key, _slot: Slot) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// Taken before a database read; a read may fill an empty slot only if no
/// slot was evicted or cleared since.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// What arrives at a slot, and whether it may replace what is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// A database read, `fenced` if a slot was evicted or cleared since it began.
    Read { version: i64, fenced: bool },
    /// A committed write of this replica, with the account or without.
    Written { version: i64, with_account: bool },
    /// Another writer's change, heard through a notification.
    Heard { version: i64 },
}

/// The rule: an entry never goes back to an older version, a tombstone may
/// be filled at its own version, and a read fills an empty slot only unfenced.
pub(crate) fn admits(current: Option<(i64, bool)>, arrival: Arrival) -> bool {
    match (current, arrival) {
        (None, Arrival::Read { fenced, .. }) => !fenced,
        (None, _) => true,
        (Some((held, has_account)), Arrival::Read { version, .. })
        | (
            Some((held, has_account)),
            Arrival::Written {
                version,
                with_account: true,
            },
        ) => version > held || (version == held && !has_account),
        (Some((held, _)), Arrival::Written { version, .. } | Arrival::Heard { version }) => {
            version > held
        }
    }
}

pub struct AccountCache {
    slots: Cache<Key, Slot, UnitWeighter, DefaultHashBuilder, Evictions>,
    evictions: Arc<AtomicU64>,
    /// Serializes the compare-then-insert of arrivals; lookups do not take it.
    arrivals: Mutex<()>,
    /// False while this replica cannot hear other writers (PostgreSQL's
    /// listening connection is not open).
    serving: AtomicBool,
}

impl AccountCache {
    /// A cache of at most `entries` accounts; `serving` false until
    /// `resume` (PostgreSQL, once it listens).
    pub fn new(entries: usize, serving: bool) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        Self {
            slots: Cache::with(
                entries,
                entries as u64,
                UnitWeighter,
                DefaultHashBuilder::default(),
                Evictions(evictions.clone()),
            ),
            evictions,
            arrivals: Mutex::new(()),
            serving: AtomicBool::new(serving),
        }
    }

    pub fn get(&self, tenant: &str, account_id: &str) -> Option<Account> {
        if !self.serving.load(Ordering::Acquire) {
            return None;
        }
        let slot = self.slots.get(&Lookup(tenant, account_id))?;
        slot.account.map(|account| (*account).clone())
    }

    pub fn ticket(&self) -> Ticket {
        Ticket(self.evictions.load(Ordering::Acquire))
    }

    /// Keeps an account read from the database at `version`.
    pub fn fill(&self, ticket: Ticket, tenant: &str, version: i64, account: &Account) {
        if !self.serving.load(Ordering::Acquire) {
            return;
        }
        let read = || Arrival::Read {
            version,
            fenced: self.evictions.load(Ordering::Acquire) != ticket.0,
        };
        self.arrive(tenant, &account.account_id, read, Some(account));
    }

    /// After the commit of this replica's write of the account at `version`
    /// (with the account as written, when the write has it).
    pub fn written(&self, tenant: &str, account_id: &str, version: i64, account: Option<&Account>) {
        let with_account = account.is_some();
        let written = || Arrival::Written {
            version,
            with_account,
        };
        self.arrive(tenant, account_id, written, account);
    }

    /// Another writer changed the account to `version` (or erased it: [`ERASED`]).
    pub fn heard(&self, tenant: &str, account_id: &str, version: i64) {
        self.arrive(tenant, account_id, || Arrival::Heard { version }, None);
    }

    /// Stops answering and forgets everything: changes may go unheard.
    pub fn suspend(&self) {
        self.serving.store(false, Ordering::Release);
        self.clear();
    }

    /// Answers again, from empty: call once changes are heard again.
    pub fn resume(&self) {
        self.clear();
        self.serving.store(true, Ordering::Release);
    }

    fn clear(&self) {
        let _arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        self.evictions.fetch_add(1, Ordering::AcqRel);
        self.slots.clear();
    }

    /// `arrival` is decided under the lock (a read's fence must be); the
    /// account is copied only once admitted.
    fn arrive(
        &self,
        tenant: &str,
        account_id: &str,
        arrival: impl FnOnce() -> Arrival,
        account: Option<&Account>,
    ) {
        let _arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        let current = self
            .slots
            .peek(&Lookup(tenant, account_id))
            .map(|slot| (slot.version, slot.account.is_some()));
        let arrival = arrival();
        if !admits(current, arrival) {
            return;
        }
        let version = match arrival {
            Arrival::Read { version, .. }
            | Arrival::Written { version, .. }
            | Arrival::Heard { version } => version,
        };
        let slot = Slot {
            version,
            account: account.map(|account| Arc::new(account.clone())),
        };
        self.slots
            .insert((tenant.to_owned(), account_id.to_owned()), slot);
    }
}

/// The channel the trigger on `accounts` notifies (`sql/account_changed.sql`).
pub const CHANNEL: &str = "cascade_accounts";

/// PostgreSQL: hears every replica's writes of accounts (its own too) until
/// aborted, on a connection of its own, and keeps `cache` answering only
/// while it hears them; after a lost connection it reconnects with backoff
/// and the cache starts empty.
pub fn listen_for_changes(db: &DatabaseConnection, cache: Arc<AccountCache>) -> JoinHandle<()> {
    // LISTEN holds its connection for good, so not one of the pool's.
    let options = db.get_postgres_connection_pool().connect_options();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .connect_lazy_with((*options).clone());
    let retry =
        || cascade_chassis::retry::delays(Duration::from_millis(100), Duration::from_secs(5));
    tokio::spawn(async move {
        let mut delays = retry();
        loop {
            let mut listener = match subscribe(&pool).await {
                Ok(listener) => listener,
                Err(error) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(%error, ?delay, "account cache: cannot listen for changes; reads go to the database");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            delays = retry();
            cache.resume();
            tracing::info!("account cache: listening for other replicas' changes");
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => match parse_change(notification.payload()) {
                        Some((tenant, account_id, version)) => {
                            cache.heard(tenant, account_id, version);
                        }
                        None => tracing::warn!(
                            payload = notification.payload(),
                            "account cache: a change it cannot read"
                        ),
                    },
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "account cache: listening failed");
                        break;
                    }
                }
            }
            cache.suspend();
            tracing::warn!(
                "account cache: lost the listening connection; reads go to the database until it is back"
            );
        }
    })
}

async fn subscribe(pool: &PgPool) -> Result<PgListener, sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection ends this listener (`try_recv` answers `None`): the
    // loop above then suspends the cache before it listens again.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// A notification's payload, "tenant account_id version" (the trigger in
/// `sql/account_changed.sql`); `None` if it is not one.
pub fn parse_change(payload: &str) -> Option<(&str, &str, i64)> {
    let mut parts = payload.rsplitn(3, ' ');
    let version = parts.next()?.parse().ok()?;
    let account_id = parts.next()?;
    let tenant = parts.next()?;
    Some((tenant, account_id, version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_domain::{AccountStage, CustomerType};
    use chrono::Utc;

    fn account(id: &str, name: &str) -> Account {
        Account {
            account_id: id.into(),
            name: name.into(),
            domain: None,
            owner_id: None,
            stage: AccountStage::Targeted,
            customer_type: CustomerType::Prospect,
            stage_entered_at: Utc::now(),
            engagement_score: 0.0,
            average_engagement_score: 0.0,
            intent_score: 0.0,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            disqualify_count: 0,
            nurture_count: 0,
            stages_reached: Vec::new(),
            last_recycle: None,
            engagement_since_recycle: 0.0,
            external_id: None,
            open_opportunities: Vec::new(),
            at_risk: None,
        }
    }

    fn name(cache: &AccountCache, id: &str) -> Option<String> {
        cache.get("t", id).map(|a| a.name)
    }

    #[test]
    fn the_rule_never_goes_back_a_version() {
        let read = |version| Arrival::Read {
            version,
            fenced: false,
        };
        assert!(admits(None, read(3)));
        assert!(!admits(
            None,
            Arrival::Read {
                version: 3,
                fenced: true
            }
        ));
        assert!(!admits(Some((4, true)), read(3)), "older read");
        assert!(
            !admits(Some((4, false)), read(3)),
            "read older than a tombstone"
        );
        assert!(admits(Some((4, false)), read(4)), "fills its tombstone");
        assert!(!admits(Some((4, true)), read(4)), "already held");
        assert!(admits(Some((4, true)), read(5)));
        assert!(!admits(Some((5, true)), Arrival::Heard { version: 5 }));
        assert!(admits(Some((5, true)), Arrival::Heard { version: 6 }));
        let written = |version, with_account| Arrival::Written {
            version,
            with_account,
        };
        assert!(admits(Some((5, false)), written(5, true)));
        assert!(!admits(Some((5, true)), written(5, false)));
        assert!(!admits(Some((6, true)), written(5, true)));
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let cache = AccountCache::new(100, true);
        let ticket = cache.ticket();
        // The write commits (version 2) while the read holds version 1.
        cache.heard("t", "a", 2);
        cache.fill(ticket, "t", 1, &account("a", "old"));
        assert_eq!(name(&cache, "a"), None, "a tombstone, not the old read");
        cache.fill(cache.ticket(), "t", 2, &account("a", "new"));
        assert_eq!(name(&cache, "a").as_deref(), Some("new"));
        cache.written("t", "a", 3, Some(&account("a", "newer")));
        assert_eq!(name(&cache, "a").as_deref(), Some("newer"));
        cache.written("t", "a", 4, None);
        assert_eq!(name(&cache, "a"), None, "written without the account");
        cache.heard("t", "a", ERASED);
        cache.fill(cache.ticket(), "t", 4, &account("a", "gone"));
        assert_eq!(name(&cache, "a"), None, "erased stays erased");
    }

    #[test]
    fn a_read_begun_before_a_clear_fills_nothing() {
        let cache = AccountCache::new(100, true);
        let ticket = cache.ticket();
        cache.suspend();
        cache.fill(cache.ticket(), "t", 1, &account("a", "while deaf"));
        cache.resume();
        assert_eq!(name(&cache, "a"), None, "nothing kept while suspended");
        cache.fill(ticket, "t", 1, &account("a", "before the clear"));
        assert_eq!(name(&cache, "a"), None);
        cache.fill(cache.ticket(), "t", 1, &account("a", "after"));
        assert_eq!(name(&cache, "a").as_deref(), Some("after"));
        cache.suspend();
        assert_eq!(name(&cache, "a"), None, "a suspended cache answers nothing");
    }

    #[test]
    fn payloads_parse_from_the_right() {
        assert_eq!(parse_change("acme 0190-ab 7"), Some(("acme", "0190-ab", 7)));
        assert_eq!(
            parse_change("a tenant 0190-ab 9223372036854775807"),
            Some(("a tenant", "0190-ab", ERASED))
        );
        assert_eq!(parse_change("0190-ab 7"), None);
        assert_eq!(parse_change("acme 0190-ab x"), None);
    }
}
