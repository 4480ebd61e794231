//! Server-assigned resource ids: UUIDv7, so they sort by creation time and
//! index well.

/// A new id for a resource.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
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
}
