//! Server-assigned resource ids: UUIDv7, so they sort by creation time and
//! index well.

/// A new id for a resource.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A new id that sorts after `previous` (the last id of the same subject),
/// whatever the clocks: [`new_id`] when it already does, else one made a
/// millisecond after `previous`. Where ids order a subject's changes and
/// replicas' clocks differ, a change taken after another on a host whose
/// clock runs behind still sorts after it. `previous` that is not a UUIDv7
/// orders nothing.
pub fn new_id_after(previous: Option<&str>) -> String {
    let id = new_id();
    let Some(previous) = previous else {
        return id;
    };
    if id.as_str() > previous {
        return id;
    }
    created_at_ms(previous)
        .and_then(|ms| id_made_at(ms + 1))
        .unwrap_or(id)
}

/// A new id as if made at `ms` (Unix milliseconds; `None` before 1970):
/// for [`new_id_after`], and for tests that play a host whose clock is off.
pub fn id_made_at(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms).ok()?;
    let at = uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms / 1_000,
        u32::try_from(ms % 1_000).ok()? * 1_000_000,
    );
    Some(uuid::Uuid::new_v7(at).to_string())
}

/// The Unix time in milliseconds a UUIDv7 id was made at (`new_id`); `None`
/// for anything else.
pub fn created_at_ms(id: &str) -> Option<i64> {
    let (seconds, nanos) = uuid::Uuid::try_parse(id).ok()?.get_timestamp()?.to_unix();
    i64::try_from(seconds)
        .ok()?
        .checked_mul(1_000)?
        .checked_add(i64::from(nanos / 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_tells_when_it_was_made() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis();
        let made = created_at_ms(&new_id()).expect("a UUIDv7");
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis();
        assert!(
            (before..=after).contains(&(made as u128)),
            "{before} <= {made} <= {after}"
        );
        // A UUIDv4 carries no time; nor does something that is not an id.
        assert_eq!(created_at_ms("2b6c7e3a-5a4f-4d3c-9b1e-0f2a3b4c5d6e"), None);
        assert_eq!(created_at_ms("not an id"), None);
    }

    #[test]
    fn an_id_after_another_sorts_after_it_whatever_the_clock() {
        assert!(created_at_ms(&new_id_after(None)).is_some());
        // Made by a host whose clock ran an hour ahead.
        let ahead = created_at_ms(&new_id()).expect("a UUIDv7") + 3_600_000;
        let previous = id_made_at(ahead).expect("an id");
        assert_eq!(created_at_ms(&previous), Some(ahead));
        assert_eq!(id_made_at(-1), None);
        let next = new_id_after(Some(&previous));
        assert!(next > previous, "{next} after {previous}");
        assert_eq!(created_at_ms(&next), Some(ahead + 1));
        // Behind the clock: a plain new id.
        let old = new_id();
        let next = new_id_after(Some(&old));
        assert!(next > old);
        assert!(created_at_ms(&next) >= created_at_ms(&old));
        // Not a UUIDv7: nothing to follow.
        assert!(created_at_ms(&new_id_after(Some("not an id"))).is_some());
    }
}
