//! Notifications to account owners: recorded in the transaction of the
//! change that raised them, delivered through the outbox to the tenant's
//! webhook as a Microsoft Teams message card, signed with HMAC-SHA256.

use cascade_chassis::db::Stored;
use std::time::Duration;

use cascade_chassis::db::write_turn;
use cascade_chassis::outbox::{self, DeliveryError, Entry, Sink};
use cascade_chassis::page::PageRequest;
use cascade_chassis::{ServiceResult, TenantId};
use cascade_domain::ids;
use cascade_proto::outbox::v1 as outbox_pb;
use hmac::{Hmac, Mac};
use prost::Message as _;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use sha2::Sha256;

use super::accounts::account_model;
use super::entities::{account, notification};
use super::{Repository, from_ms, settings};
use crate::domain::{Delivery, DeliveryState, Notification, NotificationDraft, NotificationReason};
use sea_orm::ActiveValue::Set;

/// Outbox topic of notifications; the partition is the account.
pub const NOTIFICATION_TOPIC: &str = "notifications";
/// Header carrying `sha256=<hex HMAC of the body>` when the tenant set a secret.
pub const SIGNATURE_HEADER: &str = "x-cascade-signature";
/// Standard Webhooks (standardwebhooks.com) headers: the message id (the
/// notification's, the same on every retry), the send time in Unix seconds,
/// and `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`. The timestamp is
/// signed, so a receiver that refuses old timestamps cannot be replayed to.
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE_HEADER: &str = "webhook-signature";
/// Header carrying the notification id, so receivers can drop repeats.
pub const NOTIFICATION_ID_HEADER: &str = "x-cascade-notification-id";

/// Records a notification and queues its delivery, in the caller's transaction.
pub(crate) async fn record(
    conn: &impl ConnectionTrait,
    tenant_id: &str,
    account_id: &str,
    owner_id: &str,
    draft: NotificationDraft,
    now_ms: i64,
) -> Result<Notification, DbErr> {
    let NotificationDraft {
        reason,
        text,
        raiser_contact_id,
    } = draft;
    let notification_id = ids::new_id();
    notification::Entity::insert(notification::ActiveModel {
        notification_id: Set(notification_id.clone()),
        tenant_id: Set(tenant_id.to_owned()),
        account_id: Set(account_id.to_owned()),
        owner_id: Set(owner_id.to_owned()),
        reason: Set(Stored(reason)),
        text: Set(text.clone()),
        created_at_ms: Set(now_ms),
        state: Set(Stored(DeliveryState::Pending)),
        delivered_at_ms: Set(None),
        failed_attempts: Set(0),
        last_error: Set(None),
        last_attempt_at_ms: Set(None),
        raiser_contact_id: Set(raiser_contact_id),
    })
    .exec_without_returning(conn)
    .await?;
    // Queued under its own id: an operator retries its dead letter by the
    // id ListNotifications shows.
    outbox::enqueue_as(
        conn,
        tenant_id,
        NOTIFICATION_TOPIC,
        notification_id.clone(),
        account_id,
        outbox_pb::NotificationQueued {
            notification_id: notification_id.clone(),
        }
        .encode_to_vec(),
    )
    .await?;
    Ok(Notification {
        notification_id,
        account_id: account_id.to_owned(),
        owner_id: owner_id.to_owned(),
        reason,
        text,
        created_at: from_ms(now_ms),
        delivery: Delivery::pending(),
    })
}

fn from_model(m: notification::Model) -> ServiceResult<Notification> {
    Ok(Notification {
        reason: *m.reason,
        delivery: Delivery {
            state: *m.state,
            failed_attempts: m.failed_attempts,
            last_error: m.last_error,
            last_attempt_at: m.last_attempt_at_ms.map(from_ms),
            settled_at: m.delivered_at_ms.map(from_ms),
        },
        notification_id: m.notification_id,
        account_id: m.account_id,
        owner_id: m.owner_id,
        text: m.text,
        created_at: from_ms(m.created_at_ms),
    })
}

/// Filters of ListNotifications.
#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    pub account_id: Option<String>,
    pub state: Option<DeliveryState>,
}

impl Repository {
    /// A tenant's notifications, newest first.
    pub async fn list_notifications(
        &self,
        tenant: &TenantId,
        filter: NotificationFilter,
        page: &PageRequest,
    ) -> ServiceResult<(Vec<Notification>, String)> {
        let mut query = notification::Entity::find()
            .filter(notification::Column::TenantId.eq(tenant.as_str()))
            .order_by_desc(notification::Column::NotificationId)
            .limit(page.fetch_limit());
        if let Some(account_id) = &filter.account_id {
            account_model(&self.db, tenant, account_id).await?;
            query = query.filter(notification::Column::AccountId.eq(account_id.as_str()));
        }
        if let Some(state) = filter.state {
            query = query.filter(notification::Column::State.eq(Stored(state)));
        }
        if let Some(before) = &page.after {
            query = query.filter(notification::Column::NotificationId.lt(before.as_str()));
        }
        let (rows, token) = page.finish(query.all(&self.db).await?, |n| n.notification_id.clone());
        let notifications = rows
            .into_iter()
            .map(from_model)
            .collect::<ServiceResult<Vec<_>>>()?;
        Ok((notifications, token))
    }
}

/// Delivers notifications to each tenant's webhook.
pub struct WebhookSink {
    db: DatabaseConnection,
    http: reqwest::Client,
    /// Whether webhooks may reach private addresses (`crate::webhook`).
    private: bool,
}

impl WebhookSink {
    pub fn new(db: DatabaseConnection, timeout: Duration, private: bool) -> ServiceResult<Self> {
        // A redirect is not followed: it could lead anywhere the URL's
        // check did not look.
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent("cascade-lifecycle")
            .redirect(reqwest::redirect::Policy::none());
        if !private {
            // No proxy from the environment either: a proxy resolves the
            // host itself, past the resolver's check.
            http = http
                .dns_resolver(std::sync::Arc::new(crate::webhook::PublicResolver))
                .no_proxy();
        }
        let http = http
            .build()
            .map_err(cascade_chassis::ServiceError::internal)?;
        Ok(Self { db, http, private })
    }

    async fn deliver_one(&self, entry: &Entry) -> Result<(), DeliveryError> {
        let id = match queued_notification(&entry.payload) {
            Ok(id) => id,
            Err(error) => {
                tracing::error!(message = %entry.id, %error, "unreadable notification message dropped");
                return Ok(());
            }
        };
        let row = notification::Entity::find_by_id(id.as_str())
            .one(&self.db)
            .await
            .map_err(|e| DeliveryError::internal(format!("reading notification: {e}")))?;
        let Some(row) = row else {
            tracing::warn!(notification = %id, "notification row missing; nothing to send");
            return Ok(());
        };
        match *row.state {
            DeliveryState::Pending => {}
            // Sent again by an operator (RetryDeadLetters): pending again.
            DeliveryState::DeadLettered => {
                let reopened = notification::Entity::update_many()
                    .col_expr(
                        notification::Column::State,
                        Expr::value(DeliveryState::Pending.as_str()),
                    )
                    .filter(notification::Column::NotificationId.eq(row.notification_id.as_str()))
                    .filter(notification::Column::State.eq(Stored(DeliveryState::DeadLettered)));
                self.write(reopened)
                    .await
                    .map_err(|e| DeliveryError::internal(format!("reopening notification: {e}")))?;
            }
            DeliveryState::Delivered | DeliveryState::NoWebhook => return Ok(()),
        }
        let stored = settings::current(&self.db, &row.tenant_id)
            .await
            .map_err(|e| DeliveryError::internal(format!("reading settings: {e}")))?;
        let Some(url) = stored.settings.webhook_url else {
            self.mark(&row.notification_id, DeliveryState::NoWebhook)
                .await?;
            return Ok(());
        };
        // Written before the rule, or while an operator allowed it: an
        // address that needs no lookup is refused here (names are refused
        // by the resolver).
        if !self.private
            && let Some(why) = reqwest::Url::parse(&url)
                .ok()
                .as_ref()
                .and_then(crate::webhook::refusal)
        {
            let error = DeliveryError::internal(format!(
                "webhook address refused: {why} (lifecycle's webhook.allow_private_addresses allows it)"
            ))
            .with_code("refused");
            self.record_failed_call(&row.notification_id, &error).await;
            return Err(error);
        }
        // The account's name as it is now; its id once it is gone (erased).
        let account_name: Option<String> = account::Entity::find_by_id(row.account_id.as_str())
            .filter(account::Column::TenantId.eq(row.tenant_id.as_str()))
            .select_only()
            .column(account::Column::Name)
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(|e| DeliveryError::internal(format!("reading the account's name: {e}")))?;
        let body = teams_card(&row, account_name.as_deref());
        let mut request = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header(NOTIFICATION_ID_HEADER, &row.notification_id);
        let sent_at = cascade_chassis::time::now().timestamp();
        request = request
            .header(WEBHOOK_ID_HEADER, &row.notification_id)
            .header(WEBHOOK_TIMESTAMP_HEADER, sent_at.to_string());
        if let Some(secret) = &stored.settings.webhook_secret {
            request = request
                .header(
                    WEBHOOK_SIGNATURE_HEADER,
                    standard_signature(secret.expose(), &row.notification_id, sent_at, &body),
                )
                // The body-only signature of earlier releases, for receivers
                // that verify it; it carries no timestamp.
                .header(SIGNATURE_HEADER, signature(secret.expose(), &body));
        }
        // The attempt is on record before the call: if the process dies
        // between the receiver's answer and the bookkeeping, the retry is
        // known as one (and carries the same webhook-id).
        self.record_attempt(&row.notification_id).await;
        // The URL can carry a token (Teams webhooks do): never log it.
        let started = std::time::Instant::now();
        let answer = request.body(body).send().await;
        cascade_chassis::metrics::instruments().webhook_call(
            started.elapsed().as_secs_f64(),
            answer.as_ref().ok().map(|r| r.status().as_u16()),
        );
        let failure = match answer {
            Err(e) => Some(
                DeliveryError::caused_by("webhook unreachable", &e.without_url())
                    .with_code("unreachable"),
            ),
            Ok(response) if !response.status().is_success() => Some(
                DeliveryError::internal(format!("webhook answered {}", response.status()))
                    .with_code(response.status().as_u16().to_string()),
            ),
            Ok(_) => None,
        };
        if let Some(error) = failure {
            self.record_failed_call(&row.notification_id, &error).await;
            return Err(error);
        }
        self.mark(&row.notification_id, DeliveryState::Delivered)
            .await
    }

    async fn mark(&self, notification_id: &str, state: DeliveryState) -> Result<(), DeliveryError> {
        let settled = notification::Entity::update_many()
            .col_expr(notification::Column::State, Expr::value(state.as_str()))
            .col_expr(
                notification::Column::DeliveredAtMs,
                Expr::value(cascade_chassis::time::now().timestamp_millis()),
            )
            .filter(notification::Column::NotificationId.eq(notification_id));
        self.write(settled)
            .await
            .map_err(|e| DeliveryError::internal(format!("recording delivery: {e}")))
    }

    /// Notes the time of an attempt about to be made.
    async fn record_attempt(&self, id: &str) {
        let attempt = notification::Entity::update_many()
            .col_expr(
                notification::Column::LastAttemptAtMs,
                Expr::value(cascade_chassis::time::now().timestamp_millis()),
            )
            .filter(notification::Column::NotificationId.eq(id))
            .filter(notification::Column::State.eq(Stored(DeliveryState::Pending)));
        if let Err(e) = self.write(attempt).await {
            tracing::warn!(notification = %id, error = %e, "could not record an attempt");
        }
    }

    /// Keeps a failed webhook call on the notification, for
    /// ListNotifications (the outbox retries it; its own row is pruned once
    /// delivered). Our own storage errors are not the webhook's failures.
    async fn record_failed_call(&self, id: &str, error: &DeliveryError) {
        let failed = notification::Entity::update_many()
            .col_expr(
                notification::Column::FailedAttempts,
                Expr::col(notification::Column::FailedAttempts).add(1),
            )
            .col_expr(
                notification::Column::LastError,
                Expr::value(error.message.chars().take(1000).collect::<String>()),
            )
            .col_expr(
                notification::Column::LastAttemptAtMs,
                Expr::value(cascade_chassis::time::now().timestamp_millis()),
            )
            .filter(notification::Column::NotificationId.eq(id))
            .filter(notification::Column::State.eq(Stored(DeliveryState::Pending)));
        if let Err(e) = self.write(failed).await {
            tracing::warn!(notification = %id, error = %e, "could not record a failed delivery");
        }
    }

    /// One update of a notification row, in its turn for the SQLite writer.
    async fn write(&self, update: sea_orm::UpdateMany<notification::Entity>) -> Result<(), DbErr> {
        let _turn = write_turn(&self.db).await?;
        update.exec(&self.db).await.map(|_| ())
    }
}

#[tonic::async_trait]
impl Sink for WebhookSink {
    async fn deliver(&self, run: &[Entry]) -> Result<usize, (usize, DeliveryError)> {
        for (i, entry) in run.iter().enumerate() {
            self.deliver_one(entry).await.map_err(|e| (i, e))?;
        }
        Ok(run.len())
    }

    /// The notification shows it was given up on (until an operator
    /// retries it), rather than staying PENDING (a tester's finding).
    async fn dead_lettered(&self, entry: &Entry) {
        let Ok(id) = queued_notification(&entry.payload) else {
            return;
        };
        let dead = notification::Entity::update_many()
            .col_expr(
                notification::Column::State,
                Expr::value(DeliveryState::DeadLettered.as_str()),
            )
            .filter(notification::Column::NotificationId.eq(id.as_str()))
            .filter(notification::Column::State.eq(Stored(DeliveryState::Pending)));
        if let Err(e) = self.write(dead).await {
            tracing::warn!(notification = %id, error = %e, "could not record a dead letter");
        }
    }
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The Standard Webhooks signature: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}`, keyed as `webhook::signing_key` says.
pub fn standard_signature(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    // A malformed whsec_ secret stored before it was refused: its bytes.
    let key = crate::webhook::signing_key(secret).unwrap_or_else(|_| secret.as_bytes().to_vec());
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC accepts keys of any length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// `text` as a message card shows it literally: Teams renders a card's text
/// and facts as markdown with some HTML, and an account's name is anyone's
/// input (a name written as a link put a phishing link in the owner's
/// channel). Markdown's punctuation is escaped with a backslash, HTML's
/// with entities. The `cascade` object keeps the raw values.
fn card_text(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => shown.push_str("&amp;"),
            '<' => shown.push_str("&lt;"),
            '>' => shown.push_str("&gt;"),
            '\\' | '`' | '*' | '_' | '{' | '}' | '[' | ']' | '(' | ')' | '#' | '+' | '-' | '.'
            | '!' | '|' | '~' => {
                shown.push('\\');
                shown.push(c);
            }
            c => shown.push(c),
        }
    }
    shown
}

/// A Microsoft Teams incoming-webhook message card, with Cascade's own
/// fields alongside for other receivers.
fn teams_card(row: &notification::Model, account_name: Option<&str>) -> String {
    let title = match *row.reason {
        NotificationReason::Prioritized => "Account prioritized: time to connect",
        NotificationReason::HandRaise => "A contact raised a hand",
        NotificationReason::AtRisk => "A customer is at risk",
    };
    serde_json::json!({
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": title,
        "themeColor": "0076D7",
        "title": title,
        "text": card_text(&row.text),
        "sections": [{
            "facts": [
                {"name": "Account", "value": card_text(account_name.unwrap_or(&row.account_id))},
                {"name": "Owner", "value": card_text(&row.owner_id)},
                {"name": "Reason", "value": row.reason.as_str()},
            ]
        }],
        "cascade": {
            "notificationId": row.notification_id,
            "tenantId": row.tenant_id,
            "accountId": row.account_id,
            "accountName": account_name,
            "ownerId": row.owner_id,
            "reason": row.reason.as_str(),
            "createdAtMs": row.created_at_ms,
        }
    })
    .to_string()
}

/// The notification a stored message names (`NotificationQueued`).
/// Versions before the protobuf messages stored the id's text, a UUID, whose
/// first byte is a hex digit; a NotificationQueued starts with 0x0A.
fn queued_notification(payload: &[u8]) -> Result<String, String> {
    if payload.first().is_some_and(u8::is_ascii_hexdigit) {
        return String::from_utf8(payload.to_vec()).map_err(|e| e.to_string());
    }
    let message = outbox_pb::NotificationQueued::decode(payload).map_err(|e| e.to_string())?;
    if message.notification_id.is_empty() {
        return Err("no notification id".into());
    }
    Ok(message.notification_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_shows_names_literally() {
        assert_eq!(
            card_text("[Re-authenticate](https://evil.example/login)"),
            "\\[Re\\-authenticate\\]\\(https://evil\\.example/login\\)"
        );
        assert_eq!(card_text("<b>A & B</b>"), "&lt;b&gt;A &amp; B&lt;/b&gt;");
        assert_eq!(card_text("Acme reached 60"), "Acme reached 60");
    }

    #[test]
    fn standard_signature_matches_the_reference_vector() {
        // The Standard Webhooks specification's example.
        assert_eq!(
            standard_signature(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#,
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_queued_notification_reads_back_and_old_messages_still_read() {
        let id = ids::new_id();
        let message = outbox_pb::NotificationQueued {
            notification_id: id.clone(),
        }
        .encode_to_vec();
        assert_eq!(queued_notification(&message), Ok(id.clone()));
        // As versions before the protobuf messages stored it: the id's text.
        assert_eq!(queued_notification(id.as_bytes()), Ok(id));
        let empty = outbox_pb::NotificationQueued::default().encode_to_vec();
        assert!(queued_notification(&empty).is_err());
        assert!(queued_notification(&[0x0A, 0x05, b'a']).is_err());
    }
}
