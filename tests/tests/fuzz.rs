//! Hostile-input fuzzing of every RPC of the three services (issue 8).
//!
//! Each service runs in-process on a fresh SQLite database (scoring and
//! opportunity call the in-process lifecycle). Inputs are generated from the
//! descriptor set, with no hand-written generator per message, and sent as raw
//! bytes so malformed frames and non-UTF-8 strings really reach the servers.
//! Calls run one at a time so every effect is attributed to one input.
//!
//! Oracles, each able to fail the run:
//! 1. every call ends within [`CALL_TIMEOUT`];
//! 2. no status is UNKNOWN or DATA_LOSS; INTERNAL only where gRPC prescribes it
//!    for a body the transport cannot decode (see [`allowed`]); health still
//!    answers SERVING;
//! 3. no panic anywhere in the process (a panic hook counts them);
//! 4. a call answered with an error leaves the service's database unchanged;
//!    tenant B's rows and records are unchanged at the end.
//!
//! `CASCADE_FUZZ_SECONDS` bounds the run (default 20, split over the services
//! by method count); `CASCADE_FUZZ_SEED` replays one. See docs/fuzzing.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::poll_fn;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use cascade_chassis::settings::ServiceSettings;
use cascade_proto::lifecycle::v1 as lc;
use cascade_proto::opportunity::v1 as op;
use cascade_testkit::fixtures::{account, activity};
use cascade_testkit::{
    Caller, Lifecycle, Opportunity, Scoring, TestDatabase, TestServer, eventually,
    wait_until_delivered, wait_until_folded,
};
use http_body::{Body as HttpBody, Frame};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const SECONDS_ENV: &str = "CASCADE_FUZZ_SECONDS";
const SEED_ENV: &str = "CASCADE_FUZZ_SEED";
const DEFAULT_SECONDS: u64 = 20;
/// A call not finished by then is a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server stream is read before the client drops it: watching
/// legitimately waits for events, so silence is not a hang.
const STREAM_READ: Duration = Duration::from_millis(150);
/// Health is checked after this many calls (and at the end of each service).
const HEALTH_EVERY: usize = 16;

const TENANT_A: &str = "fuzz-a";
const TENANT_B: &str = "fuzz-b";

const SERVICES: [&[&str]; 3] = [
    // Lifecycle serves its internal service (deliveries) on the same port.
    &[
        "cascade.lifecycle.v1.LifecycleService",
        "cascade.lifecycle.v1.LifecycleInternalService",
    ],
    &["cascade.scoring.v1.ScoringService"],
    &["cascade.opportunity.v1.OpportunityService"],
];

/// Ten bytes the byte-level mutator swaps for ten bytes of invalid UTF-8,
/// keeping every length prefix right.
const UTF8_SENTINEL: &str = "\u{7f}sentinel\u{7f}";
const INVALID_UTF8: [u8; 10] = [0xff, 0xfe, 0xc3, 0x28, 0x80, 0xed, 0xa0, 0x80, 0xf8, 0x88];

// ---------------------------------------------------------------------------
// Panic counting

static PANICS: AtomicUsize = AtomicUsize::new(0);
static PANIC_MESSAGES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        if let Ok(mut messages) = PANIC_MESSAGES.lock() {
            messages.push(format!("thread {thread}: {info}"));
        }
        default(info);
    }));
}

// ---------------------------------------------------------------------------
// Raw bytes over gRPC

/// Sends and receives message bodies untouched, so the server sees exactly
/// the bytes generated here.
#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// An HTTP/2 request body of fixed bytes, for hand-made (broken) gRPC frames.
struct FixedBody(Option<Bytes>);

impl HttpBody for FixedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
}

// ---------------------------------------------------------------------------
// Inputs

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    /// A message built from the descriptor with hostile field values.
    Hostile,
    /// A plausible message mutated at the byte level.
    Mutated,
    /// Random bytes, or a deeply nested length-delimited bomb.
    Random,
    /// A hand-made HTTP/2 request with a broken gRPC frame or headers.
    RawFrame,
}

/// One generated call.
struct Input {
    mode: Mode,
    /// Message bodies (several for client streaming; one otherwise).
    messages: Vec<Bytes>,
    /// `None`: no tenant header (the default tenant).
    tenant: Option<Vec<u8>>,
    actor: Option<Vec<u8>>,
    /// For [`Mode::RawFrame`]: the whole HTTP/2 body and extra headers.
    frame: Option<RawFrame>,
}

type Headers = Vec<(&'static str, Vec<u8>)>;

struct RawFrame {
    body: Bytes,
    headers: Headers,
    /// Exactly the frames a well-behaved client sends (one uncompressed,
    /// correctly sized frame per message, no encoding headers).
    well_formed: bool,
    /// The body holds more than one whole message before it ends or breaks
    /// ("trailing partial frame", "messages repeated"): a client stream may
    /// store the leading chunks before it is refused, like a multi-chunk stream.
    several_chunks: bool,
    description: &'static str,
}

/// Ids and words the generator draws from.
#[derive(Clone)]
struct Pools {
    /// Tenant A's ids: seeded, then every id a successful call returned.
    own_ids: Vec<String>,
    /// Tenant B's ids: A must never reach these records.
    other_tenant_ids: Vec<String>,
    /// Field names of every message, for FieldMask paths.
    field_names: Vec<String>,
}

struct Generator {
    rng: StdRng,
    pools: Pools,
}

const MAX_DEPTH: usize = 5;

impl Generator {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn input(&mut self, method: &MethodDescriptor) -> Input {
        let mode = match self.rng.random_range(0..100) {
            0..45 => Mode::Hostile,
            45..75 => Mode::Mutated,
            75..88 => Mode::Random,
            _ => Mode::RawFrame,
        };
        let count = if method.is_client_streaming() {
            // Empty streams, one message, or a few.
            *[0usize, 1, 1, 2, 3, 5].choose(&mut self.rng).unwrap_or(&1)
        } else {
            1
        };
        let desc = method.input();
        let mut messages = Vec::with_capacity(count);
        for _ in 0..count {
            messages.push(match mode {
                Mode::Hostile => {
                    let hostility = *[0.1, 0.3, 0.7].choose(&mut self.rng).unwrap_or(&0.3);
                    self.encoded(&desc, hostility)
                }
                Mode::Mutated | Mode::RawFrame => {
                    let base = self.encoded(&desc, 0.0);
                    if mode == Mode::Mutated {
                        self.mutate(base)
                    } else {
                        base
                    }
                }
                Mode::Random => self.random_body(),
            });
        }
        let frame = (mode == Mode::RawFrame)
            .then(|| self.raw_frame(&messages, method.is_client_streaming()));
        Input {
            mode,
            messages,
            tenant: self.tenant(),
            actor: self.chance(0.2).then(|| self.hostile_header()),
            frame,
        }
    }

    fn tenant(&mut self) -> Option<Vec<u8>> {
        match self.rng.random_range(0..100) {
            0..88 => Some(TENANT_A.as_bytes().to_vec()),
            88..91 => None,
            _ => Some(self.hostile_header()),
        }
    }

    fn hostile_header(&mut self) -> Vec<u8> {
        let options: [&[u8]; 9] = [
            b"",
            b"FUZZ-A",
            b"fuzz a",
            b"fuzz-a\t",
            b"../fuzz-b",
            b"fuzz-b;drop",
            b"\xc3\xa9t\xc3\xa9",
            b"\xff\xfe",
            b"%00",
        ];
        if self.chance(0.2) {
            return vec![b'a'; self.rng.random_range(65..5000)];
        }
        options.choose(&mut self.rng).unwrap_or(&&b""[..]).to_vec()
    }

    fn encoded(&mut self, desc: &MessageDescriptor, hostility: f64) -> Bytes {
        let message = self.message(desc, hostility, 0);
        Bytes::from(message.encode_to_vec())
    }

    fn message(
        &mut self,
        desc: &MessageDescriptor,
        hostility: f64,
        depth: usize,
    ) -> DynamicMessage {
        let mut message = DynamicMessage::new(desc.clone());
        match desc.full_name() {
            "google.protobuf.Timestamp" => return self.timestamp(message, hostility),
            "google.protobuf.FieldMask" => return self.field_mask(message, hostility),
            _ => {}
        }
        for field in desc.fields() {
            // Leave some fields unset, as callers do.
            if self.chance(0.25) {
                continue;
            }
            // One member per oneof, usually.
            if let Some(oneof) = field.containing_oneof()
                && oneof.fields().any(|f| message.has_field(&f))
                && !self.chance(0.1)
            {
                continue;
            }
            if let Some(value) = self.field_value(&field, hostility, depth) {
                message.set_field(&field, value);
            }
        }
        message
    }

    fn field_value(
        &mut self,
        field: &FieldDescriptor,
        hostility: f64,
        depth: usize,
    ) -> Option<Value> {
        if field.is_map() {
            // No Cascade message has a map; leave any future one empty.
            return None;
        }
        if field.is_list() {
            let n = if hostility > 0.0 && self.chance(hostility * 0.08) {
                // Over every documented batch and page limit.
                *[1001usize, 5000].choose(&mut self.rng).unwrap_or(&1001)
            } else {
                self.rng.random_range(0..4)
            };
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                // Oversized lists carry cheap elements.
                let h = if n > 100 {
                    hostility.min(0.05)
                } else {
                    hostility
                };
                match self.single(field, h, depth) {
                    Some(v) => items.push(v),
                    None => break,
                }
            }
            return Some(Value::List(items));
        }
        self.single(field, hostility, depth)
    }

    fn single(&mut self, field: &FieldDescriptor, hostility: f64, depth: usize) -> Option<Value> {
        let hostile = hostility > 0.0 && self.chance(hostility);
        Some(match field.kind() {
            Kind::Double => Value::F64(self.double(hostile)),
            Kind::Float => Value::F32(self.double(hostile) as f32),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(if hostile {
                *[0, -1, i32::MIN, i32::MAX, 1001, -1001]
                    .choose(&mut self.rng)
                    .unwrap_or(&-1)
            } else {
                self.rng.random_range(0..50)
            }),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(if hostile {
                *[
                    0,
                    -1,
                    i64::MIN,
                    i64::MAX,
                    i64::from(i32::MAX) + 1,
                    -253_402_300_800,
                ]
                .choose(&mut self.rng)
                .unwrap_or(&-1)
            } else {
                self.rng.random_range(0..10_000)
            }),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(if hostile {
                *[0, u32::MAX, 1 << 31].choose(&mut self.rng).unwrap_or(&0)
            } else {
                self.rng.random_range(0..50)
            }),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(if hostile {
                *[0, u64::MAX, 1 << 63].choose(&mut self.rng).unwrap_or(&0)
            } else {
                self.rng.random_range(0..10_000)
            }),
            Kind::Bool => Value::Bool(self.rng.random()),
            Kind::String => Value::String(self.string(field, hostile)),
            Kind::Bytes => {
                let n = if hostile {
                    self.rng.random_range(0..70_000)
                } else {
                    self.rng.random_range(0..16)
                };
                Value::Bytes(Bytes::from(
                    (0..n).map(|_| self.rng.random::<u8>()).collect::<Vec<_>>(),
                ))
            }
            Kind::Enum(e) => Value::EnumNumber(if hostile {
                *[-1, 99, 1000, i32::MAX, i32::MIN]
                    .choose(&mut self.rng)
                    .unwrap_or(&99)
            } else {
                let numbers: Vec<i32> = e.values().map(|v| v.number()).collect();
                *numbers.choose(&mut self.rng).unwrap_or(&0)
            }),
            Kind::Message(m) => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                Value::Message(self.message(&m, hostility, depth + 1))
            }
        })
    }

    fn double(&mut self, hostile: bool) -> f64 {
        if hostile {
            *[
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                -0.0,
                -1.0,
                f64::MAX,
                f64::MIN,
                1e308,
                f64::MIN_POSITIVE,
                5e-324,
                1e15,
            ]
            .choose(&mut self.rng)
            .unwrap_or(&f64::NAN)
        } else {
            f64::from(self.rng.random_range(0u16..200))
        }
    }

    fn string(&mut self, field: &FieldDescriptor, hostile: bool) -> String {
        let name = field.name();
        if !hostile {
            // Plausible values get past validation and reach deeper code.
            if name.ends_with("_id") || name.ends_with("_ids") || name == "cursor" {
                if self.chance(0.6)
                    && let Some(id) = self.pools.own_ids.choose(&mut self.rng)
                {
                    return id.clone();
                }
                if self.chance(0.2)
                    && let Some(id) = self.pools.other_tenant_ids.choose(&mut self.rng)
                {
                    return id.clone();
                }
            }
            if self.chance(0.15) {
                return UTF8_SENTINEL.to_owned();
            }
            let plain = match name {
                n if n.contains("email") => "fuzz@a.example",
                n if n.contains("currency") => "USD",
                n if n.contains("domain") => "a.example",
                n if n.contains("url") => "https://hooks.a.example/x",
                n if n.contains("activity_type") => "email_open",
                _ => "plain value",
            };
            return plain.to_owned();
        }
        match self.rng.random_range(0..22) {
            0 => String::new(),
            1 => "a".repeat(100_000),
            2 => "é漢🙂".repeat(3_000),
            3 => "\0\u{1}\n\r\t\u{1b}[31m\u{7f}".to_owned(),
            4 => "'; DROP TABLE accounts; --".to_owned(),
            5 => "\" OR 1=1 --".to_owned(),
            6 => "%_%\\".to_owned(),
            7 => "../../etc/passwd".to_owned(),
            8 => "accounts/../../x".to_owned(),
            9 => "\u{202e}\u{200b}\u{feff}".to_owned(),
            10 => "abc\0def".to_owned(),
            11 => ["NaN", "-1", "1e309", "null", "true", "0x10"]
                .choose(&mut self.rng)
                .unwrap_or(&"NaN")
                .to_string(),
            12 | 13 => self
                .pools
                .other_tenant_ids
                .choose(&mut self.rng)
                .cloned()
                .unwrap_or_default(),
            14 => self
                .pools
                .own_ids
                .choose(&mut self.rng)
                .cloned()
                .unwrap_or_default(),
            15 => self
                .pools
                .own_ids
                .choose(&mut self.rng)
                .map(|id| id.to_uppercase())
                .unwrap_or_default(),
            16 => format!(
                "{} ",
                self.pools
                    .own_ids
                    .choose(&mut self.rng)
                    .cloned()
                    .unwrap_or_default()
            ),
            17 => random_uuid(&mut self.rng),
            18 => ["@", "a@", "@b", "a@@b", "a@b@c.example", " fuzz@a.example "]
                .choose(&mut self.rng)
                .unwrap_or(&"@")
                .to_string(),
            19 => [
                "2024-02-30",
                "0000-00-00",
                "9999-12-31T99:99",
                "javascript:alert(1)",
                "http://127.0.0.1:1/",
            ]
            .choose(&mut self.rng)
            .unwrap_or(&"2024-02-30")
            .to_string(),
            20 => ["usd", "XXX", "€", "US", "USDD"]
                .choose(&mut self.rng)
                .unwrap_or(&"usd")
                .to_string(),
            _ => {
                let n = self.rng.random_range(1..64);
                (0..n)
                    .map(|_| {
                        char::from_u32(self.rng.random_range(1..0x11_0000)).unwrap_or('\u{fffd}')
                    })
                    .collect()
            }
        }
    }

    fn timestamp(&mut self, mut message: DynamicMessage, hostility: f64) -> DynamicMessage {
        let now = chrono::Utc::now().timestamp();
        let (seconds, nanos) = if hostility > 0.0 && self.chance(hostility) {
            (
                *[
                    i64::MIN,
                    i64::MAX,
                    -62_135_596_801,
                    253_402_300_800,
                    -1,
                    0,
                    now,
                ]
                .choose(&mut self.rng)
                .unwrap_or(&i64::MIN),
                *[0, -1, 1_000_000_000, i32::MAX, i32::MIN]
                    .choose(&mut self.rng)
                    .unwrap_or(&-1),
            )
        } else {
            (now - self.rng.random_range(-3_600..86_400 * 60), 0)
        };
        message.set_field_by_name("seconds", Value::I64(seconds));
        message.set_field_by_name("nanos", Value::I32(nanos));
        message
    }

    fn field_mask(&mut self, mut message: DynamicMessage, hostility: f64) -> DynamicMessage {
        let n = self.rng.random_range(0..4);
        let mut paths = Vec::with_capacity(n);
        for _ in 0..n {
            let path = if hostility > 0.0 && self.chance(hostility) {
                [
                    "",
                    "*",
                    "..",
                    "a.b.c",
                    "account.name",
                    "tenant_id",
                    "NAME",
                    "name ",
                    "é",
                ]
                .choose(&mut self.rng)
                .unwrap_or(&"*")
                .to_string()
            } else {
                self.pools
                    .field_names
                    .choose(&mut self.rng)
                    .cloned()
                    .unwrap_or_default()
            };
            paths.push(Value::String(path));
        }
        message.set_field_by_name("paths", Value::List(paths));
        message
    }

    /// Byte-level damage to a plausible message.
    fn mutate(&mut self, base: Bytes) -> Bytes {
        let mut bytes = base.to_vec();
        let rounds = self.rng.random_range(1..4);
        for _ in 0..rounds {
            match self.rng.random_range(0..8) {
                0 if !bytes.is_empty() => {
                    for _ in 0..self.rng.random_range(1..8) {
                        let i = self.rng.random_range(0..bytes.len());
                        bytes[i] ^= 1 << self.rng.random_range(0..8);
                    }
                }
                1 if !bytes.is_empty() => {
                    let at = self.rng.random_range(0..bytes.len());
                    bytes.truncate(at);
                }
                2 => {
                    let n = self.rng.random_range(1..64);
                    bytes.extend((0..n).map(|_| self.rng.random::<u8>()));
                }
                3 => self.corrupt_length(&mut bytes),
                4 => replace_all(&mut bytes, UTF8_SENTINEL.as_bytes(), &INVALID_UTF8),
                5 => {
                    // An unknown field, or a known number with the wrong wire type.
                    let number = *[1u32, 2, 3, 7, 99, 536_870_911]
                        .choose(&mut self.rng)
                        .unwrap_or(&99);
                    let wire = self.rng.random_range(0..6);
                    put_varint(&mut bytes, u64::from(number << 3 | wire));
                    put_varint(&mut bytes, self.rng.random_range(0..300));
                }
                6 if !bytes.is_empty() => {
                    // Repeat a slice: fields twice, or half a field.
                    let a = self.rng.random_range(0..bytes.len());
                    let b = self.rng.random_range(a..=bytes.len());
                    let slice = bytes[a..b].to_vec();
                    bytes.extend_from_slice(&slice);
                }
                _ => {
                    let at = self.rng.random_range(0..=bytes.len());
                    let n = self.rng.random_range(1..8);
                    let junk: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
                    bytes.splice(at..at, junk);
                }
            }
        }
        Bytes::from(bytes)
    }

    /// Rewrites the length prefix of one top-level length-delimited field.
    fn corrupt_length(&mut self, bytes: &mut Vec<u8>) {
        let prefixes = length_prefixes(bytes);
        let Some(&(at, width, len)) = prefixes.choose(&mut self.rng) else {
            return;
        };
        let new_len = match self.rng.random_range(0..4) {
            0 => len.saturating_add(1),
            1 => len.saturating_sub(1),
            2 => u64::from(u32::MAX),
            _ => u64::MAX,
        };
        let mut varint = Vec::new();
        put_varint(&mut varint, new_len);
        bytes.splice(at..at + width, varint);
    }

    fn random_body(&mut self) -> Bytes {
        if self.chance(0.2) {
            // A bomb: field 1, length-delimited, nested hundreds deep.
            let depth = self.rng.random_range(50..2000);
            let mut body = Vec::new();
            for _ in 0..depth {
                let mut outer = vec![0x0a];
                put_varint(&mut outer, body.len() as u64);
                outer.extend_from_slice(&body);
                body = outer;
            }
            return Bytes::from(body);
        }
        let n = *[0usize, 1, 2, 8, 64, 512]
            .choose(&mut self.rng)
            .unwrap_or(&8);
        let n = self.rng.random_range(0..=n);
        Bytes::from((0..n).map(|_| self.rng.random::<u8>()).collect::<Vec<_>>())
    }

    fn raw_frame(&mut self, messages: &[Bytes], client_streaming: bool) -> RawFrame {
        let frame = |flag: u8, len: u32, payload: &[u8]| {
            let mut f = vec![flag];
            f.extend_from_slice(&len.to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        let good: Vec<u8> = messages
            .iter()
            .flat_map(|m| frame(0, m.len() as u32, m))
            .collect();
        let first = messages.first().cloned().unwrap_or_default();
        let (body, headers, well_formed, description): (Vec<u8>, Headers, bool, _) =
            match self.rng.random_range(0..10) {
                0 => (
                    frame(1, first.len() as u32, &first),
                    vec![],
                    false,
                    "compressed flag, no grpc-encoding",
                ),
                1 => (
                    frame(self.rng.random_range(2..=255), first.len() as u32, &first),
                    vec![],
                    false,
                    "unknown flag byte",
                ),
                2 => (
                    frame(0, first.len() as u32 + 10, &first),
                    vec![],
                    false,
                    "length beyond the body",
                ),
                3 => {
                    let mut f = frame(0, first.len() as u32, &first);
                    f.extend_from_slice(&[0, 0]);
                    (f, vec![], false, "trailing partial frame")
                }
                4 => (frame(0, u32::MAX, &first), vec![], false, "4 GiB length"),
                5 => (Vec::new(), vec![], client_streaming, "no frame at all"),
                6 => (
                    frame(1, first.len() as u32, &first),
                    vec![("grpc-encoding", b"gzip".to_vec())],
                    false,
                    "gzip flag over plain bytes",
                ),
                7 => (
                    frame(1, first.len() as u32, &first),
                    vec![("grpc-encoding", b"br".to_vec())],
                    false,
                    "unsupported encoding",
                ),
                8 => {
                    let timeout = [&b"abc"[..], b"99999999999H", b"-1S", b"0n", b"1n"];
                    let value = timeout
                        .choose(&mut self.rng)
                        .unwrap_or(&&b"abc"[..])
                        .to_vec();
                    (
                        good.clone(),
                        vec![("grpc-timeout", value)],
                        true,
                        "hostile grpc-timeout",
                    )
                }
                _ => {
                    let mut two = good.clone();
                    two.extend_from_slice(&good);
                    (two, vec![], client_streaming, "messages repeated")
                }
            };
        let several_chunks = matches!(description, "trailing partial frame" | "messages repeated")
            || messages.len() > 1;
        RawFrame {
            body: Bytes::from(body),
            headers,
            well_formed,
            several_chunks,
            description,
        }
    }
}

fn random_uuid(rng: &mut StdRng) -> String {
    let b: [u8; 16] = rng.random();
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]),
        u16::from_be_bytes([b[8], b[9]]),
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(bytes: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let start = at;
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(at)?;
        at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some((value, at - start));
        }
    }
    None
}

/// (offset, width, value) of each top-level length prefix.
fn length_prefixes(bytes: &[u8]) -> Vec<(usize, usize, u64)> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some((tag, w)) = read_varint(bytes, at) else {
            break;
        };
        at += w;
        match tag & 7 {
            0 => match read_varint(bytes, at) {
                Some((_, w)) => at += w,
                None => break,
            },
            1 => at += 8,
            5 => at += 4,
            2 => {
                let Some((len, w)) = read_varint(bytes, at) else {
                    break;
                };
                found.push((at, w, len));
                at = at
                    .saturating_add(w)
                    .saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
            }
            _ => break,
        }
    }
    found
}

fn replace_all(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    debug_assert_eq!(from.len(), to.len());
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
}

// ---------------------------------------------------------------------------
// Calls

/// How a call ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Status(Code),
    /// A hand-made request answered without any grpc-status.
    NoStatus,
}

impl Outcome {
    fn label(self) -> String {
        match self {
            Self::Status(code) => format!("{code:?}"),
            Self::NoStatus => "NO_GRPC_STATUS".into(),
        }
    }
}

fn metadata(input: &Input) -> MetadataMap {
    let mut map = MetadataMap::new();
    for (key, value) in [("x-tenant-id", &input.tenant), ("x-actor-id", &input.actor)] {
        // Some hostile values cannot be sent as a header at all; those go out
        // without it (the raw-frame path sends them as raw bytes).
        if let Some(value) = value
            && let Ok(value) = AsciiMetadataValue::try_from(value.as_slice())
        {
            map.insert(key, value);
        }
    }
    map
}

fn request<T>(input: &Input, message: T) -> tonic::Request<T> {
    tonic::Request::from_parts(metadata(input), Default::default(), message)
}

/// Sends one input and returns how it ended; `Err` is a hang.
async fn call(
    channel: &Channel,
    method: &MethodDescriptor,
    input: &Input,
    harvest: &mut Vec<Bytes>,
    message: &mut String,
) -> Result<Outcome, String> {
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let work = async {
        if let Some(frame) = &input.frame {
            return raw_call(channel, &path, input, frame).await;
        }
        let mut grpc =
            tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(usize::MAX);
        if let Err(e) = grpc.ready().await {
            return Outcome::Status(Status::from_error(e.into()).code());
        }
        let path: http::uri::PathAndQuery = match path.parse() {
            Ok(p) => p,
            Err(_) => return Outcome::Status(Code::InvalidArgument),
        };
        let first = input.messages.first().cloned().unwrap_or_default();
        let result = match (method.is_client_streaming(), method.is_server_streaming()) {
            (false, false) => grpc
                .unary(request(input, first), path, RawCodec)
                .await
                .map(|r| harvest.push(r.into_inner())),
            (true, false) => {
                let stream = tokio_stream::iter(input.messages.clone());
                grpc.client_streaming(request(input, stream), path, RawCodec)
                    .await
                    .map(|r| harvest.push(r.into_inner()))
            }
            (false, true) => match grpc
                .server_streaming(request(input, first), path, RawCodec)
                .await
            {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    let mut ended = Ok(());
                    let deadline = Instant::now() + STREAM_READ;
                    while let Ok(next) =
                        tokio::time::timeout_at(deadline.into(), stream.message()).await
                    {
                        match next {
                            Ok(Some(_)) => continue,
                            Ok(None) => break,
                            Err(status) => {
                                ended = Err(status);
                                break;
                            }
                        }
                    }
                    ended
                }
                Err(status) => Err(status),
            },
            (true, true) => unreachable!("Cascade has no bidirectional RPC"),
        };
        match result {
            Ok(()) => Outcome::Status(Code::Ok),
            Err(status) => {
                *message = status.message().chars().take(500).collect();
                Outcome::Status(status.code())
            }
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, work)
        .await
        .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))
}

/// Posts a hand-made HTTP/2 request and reads grpc-status from the headers
/// (trailers-only answer) or the trailers.
async fn raw_call(channel: &Channel, path: &str, input: &Input, frame: &RawFrame) -> Outcome {
    use tonic::codegen::Service as _;
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(format!("http://fuzz{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (key, value) in [("x-tenant-id", &input.tenant), ("x-actor-id", &input.actor)] {
        if let Some(value) = value
            && let Ok(value) = http::HeaderValue::from_bytes(value)
        {
            builder = builder.header(key, value);
        }
    }
    for (key, value) in &frame.headers {
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            builder = builder.header(*key, value);
        }
    }
    let Ok(request) = builder.body(tonic::body::Body::new(FixedBody(Some(frame.body.clone()))))
    else {
        return Outcome::Status(Code::InvalidArgument);
    };
    let mut channel = channel.clone();
    if let Err(e) = poll_fn(|cx| channel.poll_ready(cx)).await {
        return Outcome::Status(Status::from_error(e.into()).code());
    }
    let response = match channel.call(request).await {
        Ok(r) => r,
        Err(e) => return Outcome::Status(Status::from_error(e.into()).code()),
    };
    if let Some(code) = grpc_status(response.headers()) {
        return Outcome::Status(code);
    }
    let mut body = response.into_body();
    let deadline = Instant::now() + STREAM_READ;
    loop {
        let next = tokio::time::timeout_at(
            deadline.into(),
            poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)),
        )
        .await;
        match next {
            // A server stream still open: it answered, and is alive.
            Err(_) => return Outcome::Status(Code::Ok),
            Ok(None) => return Outcome::NoStatus,
            Ok(Some(Err(e))) => return Outcome::Status(Status::from_error(Box::new(e)).code()),
            Ok(Some(Ok(frame))) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return grpc_status(&trailers).map_or(Outcome::NoStatus, Outcome::Status);
                }
            }
        }
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(value))
}

/// Whether every message of the input decodes as the method's input type
/// (prost-reflect, independently of the server's decoder).
fn decodable(method: &MethodDescriptor, input: &Input) -> bool {
    input
        .messages
        .iter()
        .all(|m| DynamicMessage::decode(method.input(), m.clone()).is_ok())
}

/// Oracle 2. UNKNOWN (a panic or an unmapped error) and DATA_LOSS are never
/// right. INTERNAL is right only where gRPC prescribes it: a frame whose
/// compression flag or encoding is broken. A body that is not valid protobuf
/// for the method (as this harness, decoding on its own, finds), a frame cut
/// short or a unary call without a message is the caller's bad input: never
/// INTERNAL (the services answer
/// INVALID_ARGUMENT, unless the metadata was refused first). A hand-made
/// request must get a grpc-status.
fn allowed(outcome: Outcome, method: &MethodDescriptor, input: &Input) -> Result<(), String> {
    match outcome {
        // Only a caller that set a deadline may see it expire: the server's
        // own limit (30 s) is beyond the hang timeout.
        Outcome::Status(Code::Cancelled | Code::DeadlineExceeded)
            if !deadline_expired(outcome, input) =>
        {
            Err(format!("{} without a client deadline", outcome.label()))
        }
        Outcome::NoStatus => Err("answered without a grpc-status".into()),
        Outcome::Status(Code::Unknown | Code::DataLoss) => {
            Err(format!("status {}", outcome.label()))
        }
        Outcome::Status(Code::Internal) => {
            let broken_compression = input
                .frame
                .as_ref()
                .is_some_and(|f| !f.well_formed && COMPRESSION_FAULTS.contains(&f.description));
            if broken_compression {
                Ok(())
            } else if !decodable(method, input)
                || input.frame.as_ref().is_some_and(|f| !f.well_formed)
            {
                Err("INTERNAL for an undecodable body or a frame cut short (bad input: INVALID_ARGUMENT)".into())
            } else {
                Err("INTERNAL for a well-formed, decodable request".into())
            }
        }
        Outcome::Status(_) => Ok(()),
    }
}

/// Broken frames for which gRPC prescribes INTERNAL (the compressed-flag
/// rules of the gRPC wire format); `RawFrame::description`s.
const COMPRESSION_FAULTS: [&str; 4] = [
    "compressed flag, no grpc-encoding",
    "unknown flag byte",
    "gzip flag over plain bytes",
    "unsupported encoding",
];

/// CANCELLED or DEADLINE_EXCEEDED for a call that carried a grpc-timeout.
fn deadline_expired(outcome: Outcome, input: &Input) -> bool {
    matches!(
        outcome,
        Outcome::Status(Code::Cancelled | Code::DeadlineExceeded)
    ) && input
        .frame
        .as_ref()
        .is_some_and(|f| f.headers.iter().any(|(k, _)| *k == "grpc-timeout"))
}

async fn healthy(channel: &Channel) -> Result<(), String> {
    let mut health = HealthClient::new(channel.clone());
    let check = health.check(HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(CALL_TIMEOUT, check).await {
        Ok(Ok(r)) if r.get_ref().status == 1 => Ok(()),
        Ok(Ok(r)) => Err(format!("health status {}", r.get_ref().status)),
        Ok(Err(status)) => Err(format!("health check failed: {status}")),
        Err(_) => Err("health check hung".into()),
    }
}

// ---------------------------------------------------------------------------
// Database digests

/// A read-only view of one service's SQLite file.
struct Probe {
    db: DatabaseConnection,
}

/// Columns the outbox deliverers change in the background, on their own
/// schedule: they record delivery progress (state, attempts, leases, backoff,
/// errors), not anything a request decided, so they are left out of the
/// digest. Every other column of these tables, and every other table, is
/// digested, so a rejected request that enqueued a message or recorded a
/// notification is still caught.
fn deliverer_bookkeeping(table: &str, column: &str) -> bool {
    match table {
        // shared/src/outbox.rs: claim, mark delivered (which clears the
        // payload), schedule a retry. A message a rejected request enqueued
        // still shows in the row count and its other columns.
        "outbox" => matches!(
            column,
            "state"
                | "payload"
                | "attempts"
                | "next_attempt_at_ms"
                | "lease_owner"
                | "lease_until_ms"
                | "delivered_at_ms"
                | "last_error"
        ),
        // lifecycle/src/storage/notifications.rs: marks a notification sent.
        "notifications" => matches!(column, "state" | "delivered_at_ms"),
        _ => false,
    }
}

type Digest = BTreeMap<String, (i64, u64)>;

impl Probe {
    async fn open(url: &str) -> Self {
        let url = if url.contains('?') {
            url.to_owned()
        } else {
            format!("{url}?mode=ro")
        };
        let db = Database::connect(url.as_str())
            .await
            .expect("digest connection");
        Self { db }
    }

    async fn rows(&self, sql: &str) -> Vec<sea_orm::QueryResult> {
        self.db
            .query_all_raw(Statement::from_string(DbBackend::Sqlite, sql))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Row count and a hash of every row of every table, optionally only the
    /// rows of one tenant (tables with a tenant_id column).
    async fn digest(&self, tenant: Option<&str>) -> Digest {
        let mut digest = Digest::new();
        let tables = self
            .rows("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .await;
        for table in tables {
            let table: String = table.try_get_by_index(0).expect("table name");
            let columns: Vec<String> = self
                .rows(&format!("PRAGMA table_info(\"{table}\")"))
                .await
                .iter()
                .map(|c| c.try_get("", "name").expect("column name"))
                .collect();
            let filter = match tenant {
                Some(t) if columns.iter().any(|c| c == "tenant_id") => {
                    format!("WHERE tenant_id = '{t}'")
                }
                Some(_) => continue,
                None => String::new(),
            };
            let kept: Vec<String> = columns
                .iter()
                .filter(|c| !deliverer_bookkeeping(&table, c))
                .map(|c| format!("quote(\"{c}\")"))
                .collect();
            if kept.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT count(*), group_concat(r, '|') FROM \
                 (SELECT {} AS r FROM \"{table}\" {filter} ORDER BY rowid)",
                kept.join(" || ',' || ")
            );
            let row = self.rows(&sql).await;
            let row = row.first().expect("one row");
            let count: i64 = row.try_get_by_index(0).expect("count");
            let text: Option<String> = row.try_get_by_index(1).expect("rows");
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut hasher);
            digest.insert(table, (count, hasher.finish()));
        }
        digest
    }

    /// A digest that two reads 50 ms apart agree on, with no pending fold
    /// left (scoring's folder folds one after its rest, which can outlast
    /// the window); fails the run if the database never keeps still.
    async fn settled_digest(&self) -> Digest {
        let mut last = self.digest(None).await;
        eventually("the database to keep still", async || {
            // The window the database must stay unchanged over.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.digest(None).await;
            let mut changed = changed_tables(&last, &now);
            if now.get("pending_folds").is_some_and(|d| d.0 > 0) {
                changed.push("pending_folds (not folded yet)".into());
            }
            last = now;
            if changed.is_empty() {
                Ok(last.clone())
            } else {
                Err(changed)
            }
        })
        .await
    }
}

fn changed_tables(before: &Digest, after: &Digest) -> Vec<String> {
    let mut names: Vec<&String> = before.keys().chain(after.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| before.get(*n) != after.get(*n))
        .map(|n| {
            let (b, a) = (
                before.get(n).map_or(0, |d| d.0),
                after.get(n).map_or(0, |d| d.0),
            );
            format!("{n} ({b} -> {a} rows)")
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The run

struct Target {
    name: &'static str,
    services: &'static [&'static str],
    channel: Channel,
    probe: Probe,
}

#[derive(Default)]
struct Stats {
    /// method -> outcome -> count
    per_method: BTreeMap<String, BTreeMap<String, usize>>,
    per_mode: BTreeMap<String, usize>,
    db_checks: usize,
    /// Client streams of several chunks answered with an error: see `fuzz_one`.
    partial_streams: usize,
    /// Calls whose own short deadline expired (outcome unknown, not checked).
    expired: usize,
    total: usize,
}

struct Failure {
    service: &'static str,
    method: String,
    iteration: usize,
    mode: Mode,
    tenant: Option<Vec<u8>>,
    detail: String,
    messages: Vec<Bytes>,
    frame: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Fuzzes one service until `budget` is spent or something fails.
async fn fuzz_service(
    target: &Target,
    pool: &DescriptorPool,
    pools: &Pools,
    seed: u64,
    budget: Duration,
    stats: &mut Stats,
) -> Result<(), Box<Failure>> {
    let methods: Vec<MethodDescriptor> = target
        .services
        .iter()
        .flat_map(|name| {
            pool.get_service_by_name(name)
                .expect("service in descriptor set")
                .methods()
                .collect::<Vec<_>>()
        })
        .collect();
    let mut generator = Generator {
        rng: StdRng::seed_from_u64(seed),
        pools: pools.clone(),
    };
    let started = Instant::now();
    let mut before: Option<Digest> = None;
    let mut iteration = 0;
    while started.elapsed() < budget {
        iteration += 1;
        let method = methods.choose(&mut generator.rng).expect("methods").clone();
        let input = generator.input(&method);
        let fail = |detail: String, input: &Input| {
            Box::new(Failure {
                service: target.name,
                method: method.full_name().to_owned(),
                iteration,
                mode: input.mode,
                tenant: input.tenant.clone(),
                detail,
                messages: input.messages.clone(),
                frame: input
                    .frame
                    .as_ref()
                    .map(|f| format!("{} (body {})", f.description, hex(&f.body))),
            })
        };
        let digest_before = match before.take() {
            Some(d) => d,
            None => target.probe.digest(None).await,
        };
        let mut responses = Vec::new();
        let mut message = String::new();
        let outcome = match call(
            &target.channel,
            &method,
            &input,
            &mut responses,
            &mut message,
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(hang) => return Err(fail(hang, &input)),
        };
        if let Err(detail) = allowed(outcome, &method, &input) {
            return Err(fail(format!("{detail} (message: {message:?})"), &input));
        }
        let panics = PANICS.load(Ordering::SeqCst);
        if panics > 0 {
            return Err(fail(
                format!(
                    "{panics} panic(s): {:?}",
                    PANIC_MESSAGES.lock().map(|m| m.clone())
                ),
                &input,
            ));
        }
        if outcome == Outcome::Status(Code::Ok) {
            // Ids returned by successful calls are fed back in, so later
            // inputs reach records that exist.
            for response in responses {
                harvest_ids(&method.output(), response, &mut generator.pools.own_ids);
            }
            // Scoring folds an accepted group after it answered: wait for
            // that, so it does not land on the next call's check.
            if target.name == "scoring" {
                before = Some(target.probe.settled_digest().await);
            }
        } else if deadline_expired(outcome, &input) {
            // The caller's deadline ran out: in gRPC that means "outcome
            // unknown", not "refused" (the work may finish after the answer,
            // e.g. a commit already handed to SQLite). Not held to
            // "unchanged"; wait until the database is still, so nothing
            // lands on the next call's account.
            stats.expired += 1;
            before = Some(target.probe.settled_digest().await);
        } else {
            let digest_after = target.probe.digest(None).await;
            // StreamActivities stores each chunk as it arrives (its documented
            // contract), so a stream of several chunks rejected at a later one
            // may have stored the earlier ones: only single-chunk streams are
            // held to "unchanged"; the others are counted and reported.
            let partial = method.is_client_streaming()
                && (input.messages.len() > 1
                    || input.frame.as_ref().is_some_and(|f| f.several_chunks));
            if partial {
                stats.partial_streams += 1;
                // The chunks it stored are folded after the answer: wait
                // for that, so the fold does not land on the next call's
                // check (a GetScoringModel once saw a partial stream's
                // scores and deliveries appear).
                before = Some(target.probe.settled_digest().await);
            } else {
                stats.db_checks += 1;
                let changed = changed_tables(&digest_before, &digest_after);
                if !changed.is_empty() {
                    return Err(fail(
                        format!(
                            "rejected with {} but changed {}",
                            outcome.label(),
                            changed.join(", ")
                        ),
                        &input,
                    ));
                }
                before = Some(digest_after);
            }
        }
        stats.total += 1;
        *stats
            .per_method
            .entry(method.full_name().to_owned())
            .or_default()
            .entry(outcome.label())
            .or_default() += 1;
        *stats
            .per_mode
            .entry(format!("{:?}", input.mode))
            .or_default() += 1;
        if iteration % HEALTH_EVERY == 0
            && let Err(e) = healthy(&target.channel).await
        {
            return Err(fail(format!("after this call: {e}"), &input));
        }
    }
    healthy(&target.channel).await.map_err(|e| {
        Box::new(Failure {
            service: target.name,
            method: "(end of run)".into(),
            iteration,
            mode: Mode::Hostile,
            tenant: None,
            detail: e,
            messages: Vec::new(),
            frame: None,
        })
    })?;
    // Every method was tried at least once in a default run; say so if not.
    for method in &methods {
        stats
            .per_method
            .entry(method.full_name().to_owned())
            .or_default();
    }
    Ok(())
}

/// Collects UUID-looking `*_id` strings from a decoded response.
fn harvest_ids(desc: &MessageDescriptor, body: Bytes, ids: &mut Vec<String>) {
    fn walk(message: &DynamicMessage, ids: &mut Vec<String>) {
        for (field, value) in message.fields() {
            visit(field.name(), value, ids);
        }
    }
    fn visit(name: &str, value: &Value, ids: &mut Vec<String>) {
        match value {
            Value::String(s) if name.ends_with("_id") && s.len() == 36 && !ids.contains(s) => {
                if ids.len() >= 64 {
                    ids.remove(0);
                }
                ids.push(s.clone());
            }
            Value::Message(m) => walk(m, ids),
            Value::List(items) => items.iter().for_each(|v| visit(name, v, ids)),
            _ => {}
        }
    }
    if let Ok(message) = DynamicMessage::decode(desc.clone(), body) {
        walk(&message, ids);
    }
}

async fn seed_tenant(
    tenant: &str,
    lifecycle: &Lifecycle,
    scoring: &Scoring,
    opportunity: &Opportunity,
) -> (lc::Account, lc::Contact, op::Opportunity) {
    let (lifecycle, scoring, opportunity) = (
        lifecycle.as_tenant(tenant),
        scoring.as_tenant(tenant),
        opportunity.as_tenant(tenant),
    );
    let owner = format!("owner@{tenant}.example");
    let account = lifecycle
        .create_account_with(account(
            &format!("{tenant} corp"),
            &format!("{tenant}.example"),
            &owner,
        ))
        .await;
    let contact = lifecycle
        .create_contact_with(lc::Contact {
            account_id: account.account_id.clone(),
            email: format!("buyer@{tenant}.example"),
            first_name: "Ann".into(),
            ..Default::default()
        })
        .await;
    let seeded = scoring
        .record(vec![activity(
            &format!("{tenant}-seed-1"),
            "email_open",
            &account.account_id,
            &contact.contact_id,
        )])
        .await;
    assert_eq!(seeded.recorded_count, 1, "{seeded:?}");
    let opportunity = opportunity
        .try_create(op::Opportunity {
            account_id: account.account_id.clone(),
            name: format!("{tenant} deal"),
            owner_id: owner,
            buying_group_contact_ids: vec![contact.contact_id.clone()],
            ..Default::default()
        })
        .await
        .expect("opportunity");
    (account, contact, opportunity)
}

/// B's account, contact and opportunity as the API returns them.
async fn read_b(
    seeded_ids: (&str, &str, &str),
    lifecycle: &Lifecycle,
    opportunity: &Opportunity,
) -> (lc::Account, lc::Contact, op::Opportunity) {
    let (account_id, contact_id, opportunity_id) = seeded_ids;
    let lifecycle = lifecycle.as_tenant(TENANT_B);
    let account = lifecycle.account(account_id).await;
    let contact = lifecycle.contact(contact_id).await;
    let opportunity = opportunity.as_tenant(TENANT_B).get(opportunity_id).await;
    (account, contact, opportunity)
}

fn field_names(pool: &DescriptorPool) -> Vec<String> {
    let mut names: Vec<String> = pool
        .all_messages()
        .filter(|m| m.package_name().starts_with("cascade."))
        .flat_map(|m| m.fields().map(|f| f.name().to_owned()).collect::<Vec<_>>())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The three services, each on its own fresh SQLite database, healthy.
async fn start_services() -> ([TestDatabase; 3], [TestServer; 3]) {
    let dbs = [
        TestDatabase::sqlite(),
        TestDatabase::sqlite(),
        TestDatabase::sqlite(),
    ];
    let lifecycle = TestServer::start(
        cascade_lifecycle::build(&ServiceSettings::for_tests(dbs[0].settings.clone()))
            .await
            .expect("lifecycle builds"),
    );
    // No erasure or contact change is applied while the fuzz runs, and no
    // background check delivers: scoring's part of an erasure would deliver
    // a recomputed score into lifecycle in the middle of lifecycle's own
    // fuzzing, which must see only its calls' writes. The RPCs themselves
    // are fuzzed all the same.
    let quiet = |lifecycle_client: &mut cascade_chassis::client::LifecycleClientSettings| {
        lifecycle_client.url = lifecycle.url();
        lifecycle_client.erasure_poll_ms = 3_600_000;
        lifecycle_client.erasure_settle_ms = 4 * 3_600_000;
    };
    let mut scoring_settings = cascade_scoring::Settings::for_tests(dbs[1].settings.clone());
    quiet(&mut scoring_settings.own.lifecycle);
    scoring_settings.own.decay.refresh_interval_ms = 0;
    let scoring = TestServer::start(
        cascade_scoring::build(&scoring_settings)
            .await
            .expect("scoring builds"),
    );
    let mut opportunity_settings =
        cascade_opportunity::Settings::for_tests(dbs[2].settings.clone());
    quiet(&mut opportunity_settings.own.lifecycle);
    opportunity_settings.own.contracts.check_interval_ms = 3_600_000;
    let opportunity = TestServer::start(
        cascade_opportunity::build(&opportunity_settings)
            .await
            .expect("opportunity builds"),
    );
    for server in [&lifecycle, &scoring, &opportunity] {
        let what = format!("{} to answer SERVING", server.url());
        eventually(&what, async || healthy(&server.channel()).await).await;
    }

    (dbs, [lifecycle, scoring, opportunity])
}

/// Every RPC of every service, unary and streaming, answers a body that is
/// not valid protobuf (a varint cut short) and a frame cut short with
/// INVALID_ARGUMENT: the caller's bad input, not INTERNAL (issue 15).
#[tokio::test]
async fn undecodable_bodies_answer_invalid_argument_on_every_rpc() {
    let (_dbs, servers) = start_services().await;
    let pool = DescriptorPool::decode(cascade_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    // Field 1, length-delimited, its length a varint that never ends: no
    // request type of any RPC decodes it.
    let undecodable = Bytes::from_static(&[0x0a, 0xff]);
    let mut checked = 0;
    let served = SERVICES
        .iter()
        .zip(&servers)
        .flat_map(|(services, server)| services.iter().map(move |service| (service, server)));
    for (service, server) in served {
        for method in pool
            .get_service_by_name(service)
            .expect("service")
            .methods()
        {
            let what = format!("{service}/{}", method.name());
            assert!(
                !decodable(&method, &input_of(vec![undecodable.clone()], None)),
                "{what}"
            );
            let mut message = String::new();
            let outcome = call(
                &server.channel(),
                &method,
                &input_of(vec![undecodable.clone()], None),
                &mut Vec::new(),
                &mut message,
            )
            .await
            .expect("an answer");
            assert_eq!(
                outcome,
                Outcome::Status(Code::InvalidArgument),
                "{what}: {message}"
            );
            assert!(
                message.contains("failed to decode Protobuf message"),
                "{what}: the decoder's reason is kept: {message}"
            );
            // A frame whose length runs past the end of the body.
            let mut body = vec![0u8];
            body.extend_from_slice(&12u32.to_be_bytes());
            body.extend_from_slice(&[0x0a, 0x00]);
            let cut_short = RawFrame {
                body: Bytes::from(body),
                headers: vec![],
                well_formed: false,
                several_chunks: false,
                description: "length beyond the body",
            };
            let outcome = call(
                &server.channel(),
                &method,
                &input_of(Vec::new(), Some(cut_short)),
                &mut Vec::new(),
                &mut message,
            )
            .await
            .expect("an answer");
            assert_eq!(
                outcome,
                Outcome::Status(Code::InvalidArgument),
                "{what}, frame cut short"
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "every RPC of the three services: {checked}");
    for server in servers {
        server.stop().await;
    }
}

/// A call of tenant `acme` with these bodies (or this hand-made frame).
fn input_of(messages: Vec<Bytes>, frame: Option<RawFrame>) -> Input {
    Input {
        mode: if frame.is_some() {
            Mode::RawFrame
        } else {
            Mode::Random
        },
        messages,
        tenant: Some(b"acme".to_vec()),
        actor: Some(b"fuzz".to_vec()),
        frame,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_proper_statuses_and_change_nothing() {
    count_panics();
    let seconds: u64 = std::env::var(SECONDS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECONDS);
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("fuzz: seed {seed} ({SEED_ENV}={seed} replays it), {seconds} s");

    let (dbs, [lifecycle, scoring, opportunity]) = start_services().await;

    // Tenant A (the caller) and tenant B (the bystander) get real records.
    let lc_client = Lifecycle::new(lifecycle.channel(), Caller::tenant(TENANT_A));
    let sc_client = Scoring::new(scoring.channel(), Caller::tenant(TENANT_A));
    let op_client = Opportunity::new(opportunity.channel(), Caller::tenant(TENANT_A));
    let (a_account, a_contact, a_opp) =
        seed_tenant(TENANT_A, &lc_client, &sc_client, &op_client).await;
    let (b_account, b_contact, b_opp) =
        seed_tenant(TENANT_B, &lc_client, &sc_client, &op_client).await;
    let a_ids = vec![
        a_account.account_id,
        a_contact.contact_id,
        a_opp.opportunity_id,
    ];
    let b_ids = vec![
        b_account.account_id,
        b_contact.contact_id,
        b_opp.opportunity_id,
    ];

    let probes = [
        Probe::open(&dbs[0].settings.url).await,
        Probe::open(&dbs[1].settings.url).await,
        Probe::open(&dbs[2].settings.url).await,
    ];
    // Let the seeding's deliveries (scores and opportunity events into
    // lifecycle) finish, so nothing but the fuzzed calls writes lifecycle.
    // Scores reach the outbox through a fold: an outbox still empty because
    // the fold has not run yet is not delivered (a CI run once read tenant B
    // before its score landed).
    wait_until_folded(&dbs[1].settings).await;
    wait_until_delivered(&dbs[1].settings, cascade_scoring::storage::SCORE_TOPIC).await;
    wait_until_delivered(&dbs[2].settings, cascade_opportunity::storage::EVENT_TOPIC).await;
    let b_refs = (b_ids[0].as_str(), b_ids[1].as_str(), b_ids[2].as_str());
    let b_before = read_b(b_refs, &lc_client, &op_client).await;
    let mut b_rows_before = Vec::new();
    for probe in &probes {
        b_rows_before.push(probe.digest(Some(TENANT_B)).await);
    }

    let pool = DescriptorPool::decode(cascade_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let pools = Pools {
        own_ids: a_ids,
        other_tenant_ids: b_ids.clone(),
        field_names: field_names(&pool),
    };
    let method_counts: Vec<usize> = SERVICES
        .iter()
        .map(|services| {
            services
                .iter()
                .map(|s| {
                    pool.get_service_by_name(s)
                        .expect("service")
                        .methods()
                        .len()
                })
                .sum()
        })
        .collect();
    let all_methods: usize = method_counts.iter().sum();

    let [p0, p1, p2] = probes;
    let targets = [
        Target {
            name: "lifecycle",
            services: SERVICES[0],
            channel: lifecycle.channel(),
            probe: p0,
        },
        Target {
            name: "scoring",
            services: SERVICES[1],
            channel: scoring.channel(),
            probe: p1,
        },
        Target {
            name: "opportunity",
            services: SERVICES[2],
            channel: opportunity.channel(),
            probe: p2,
        },
    ];
    let mut stats = Stats::default();
    let started = Instant::now();
    let mut failure = None;
    // Lifecycle first: while it is fuzzed, no other service delivers into it.
    for (i, target) in targets.iter().enumerate() {
        let budget =
            Duration::from_secs_f64(seconds as f64 * method_counts[i] as f64 / all_methods as f64);
        let service_seed = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if let Err(f) = fuzz_service(target, &pool, &pools, service_seed, budget, &mut stats).await
        {
            failure = Some(f);
            break;
        }
    }
    let elapsed = started.elapsed();

    println!("\nfuzz: inputs per method and outcome");
    for (method, outcomes) in &stats.per_method {
        let tried: usize = outcomes.values().sum();
        let histogram: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  {method:<64} {tried:>6}  {}", histogram.join(", "));
    }
    println!(
        "fuzz: {} inputs in {:.1} s ({:.0}/s); by mode {:?}; {} database checks; \
         {} multi-chunk streams rejected and {} expired deadlines (not held to unchanged)",
        stats.total,
        elapsed.as_secs_f64(),
        stats.total as f64 / elapsed.as_secs_f64().max(0.001),
        stats.per_mode,
        stats.db_checks,
        stats.partial_streams,
        stats.expired
    );

    if let Some(f) = failure {
        let mut report = format!(
            "FUZZ FAILURE in {} {} (iteration {}, mode {:?})\n  {}\n  replay: {SEED_ENV}={seed}\n  tenant header: {:?}\n",
            f.service,
            f.method,
            f.iteration,
            f.mode,
            f.detail,
            f.tenant.as_deref().map(String::from_utf8_lossy)
        );
        if let Some(frame) = &f.frame {
            let _ = writeln!(report, "  raw frame: {frame}");
        }
        for (i, m) in f.messages.iter().enumerate() {
            let _ = writeln!(report, "  message {i} ({} bytes): {}", m.len(), hex(m));
        }
        panic!("{report}");
    }

    // Tenant B, never the caller, is exactly as it was.
    let b_after = read_b(b_refs, &lc_client, &op_client).await;
    assert_eq!(b_after, b_before, "tenant B's records changed");
    for (probe, before) in targets.iter().map(|t| &t.probe).zip(&b_rows_before) {
        let after = probe.digest(Some(TENANT_B)).await;
        let changed = changed_tables(before, &after);
        assert!(
            changed.is_empty(),
            "tenant B's rows changed: {}",
            changed.join(", ")
        );
    }
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "panics: {:?}",
        PANIC_MESSAGES.lock().map(|m| m.clone())
    );

    opportunity.stop().await;
    scoring.stop().await;
    lifecycle.stop().await;
    drop(dbs);
}
