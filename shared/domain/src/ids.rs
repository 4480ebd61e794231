//! Server-assigned resource ids: UUIDv7, so they sort by creation time and
//! index well.

/// A new id for a resource.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
