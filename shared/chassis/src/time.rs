//! Conversions between protobuf timestamps and `chrono` times.

use chrono::{DateTime, Utc};

/// The earliest and latest times Cascade accepts from callers.
const MIN_SECONDS: i64 = 0; // 1970-01-01T00:00:00Z
const MAX_SECONDS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z

/// A protobuf timestamp as a UTC time; `None` when out of range or malformed.
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos)
    {
        return None;
    }
    DateTime::from_timestamp(ts.seconds, ts.nanos as u32)
}

pub fn to_timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

/// Now, truncated to milliseconds: the precision of every time Cascade
/// records (the histories store epoch milliseconds), so the times of one
/// change read back equal on every backend and in every field.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_timestamps() {
        let ok = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        };
        assert_eq!(from_timestamp(&ok).map(to_timestamp), Some(ok));
        for bad in [
            prost_types::Timestamp {
                seconds: -1,
                nanos: 0,
            },
            prost_types::Timestamp {
                seconds: MAX_SECONDS + 1,
                nanos: 0,
            },
            prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            },
            prost_types::Timestamp {
                seconds: 0,
                nanos: 1_000_000_000,
            },
        ] {
            assert_eq!(from_timestamp(&bad), None, "{bad:?}");
        }
    }
}
