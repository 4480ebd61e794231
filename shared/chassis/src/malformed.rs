//! A request body that is not valid protobuf is the caller's bad input.
//!
//! tonic answers a body its codec cannot decode (a truncated varint, a bad
//! length, invalid UTF-8 in a string), a frame cut short, or a unary call
//! without a message with INTERNAL, before any handler runs, on every
//! service and RPC. Clients' retry policies
//! read INTERNAL as a fault of the server, and the API conventions say bad
//! input is INVALID_ARGUMENT, so this layer turns exactly those statuses into
//! INVALID_ARGUMENT, keeping the decoder's message (it names the field). The
//! frame errors gRPC prescribes as INTERNAL (a compressed flag without an
//! encoding, an unknown flag byte, a body that does not decompress) are left
//! as they are. The statuses are recognised by tonic's own messages, the only
//! thing that tells them apart from the outside; `malformed` tests pin them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use tonic::{Code, Status};
use tower::Service;

/// What tonic says for an undecodable body: prost's DecodeError, a frame
/// that ends before its length, and a unary call without any message.
const DECODE_FAILURES: [&str; 3] = [
    "failed to decode Protobuf message",
    "Unexpected EOF decoding stream",
    "Missing request message",
];

/// Tower service: undecodable request bodies answer INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct MalformedRequest<S> {
    inner: S,
}

impl<S> MalformedRequest<S> {
    /// The layer, for `ServiceBuilder::layer`.
    pub fn layer() -> impl tower::Layer<S, Service = Self> + Clone {
        tower::layer::layer_fn(|inner| Self { inner })
    }
}

impl<S, B, ResBody> Service<Request<B>> for MalformedRequest<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            // A decode failure is answered before any message is sent, so
            // its status is in the headers (a trailers-only response).
            reclassify(response.headers_mut());
            Ok(response)
        })
    }
}

/// Rewrites an INTERNAL decode failure in `headers` to INVALID_ARGUMENT.
fn reclassify(headers: &mut HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() != Code::Internal
        || !DECODE_FAILURES
            .iter()
            .any(|failure| status.message().starts_with(failure))
    {
        return;
    }
    let message = format!(
        "the request body is not a valid protobuf message of this RPC's request type: {}",
        status.message()
    );
    // Cannot fail: the status has no binary details to encode.
    let _ = Status::invalid_argument(message).add_header(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(status: &Status) -> HeaderMap {
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).expect("encodes");
        headers
    }

    fn after(status: Status) -> Status {
        let mut headers = headers_of(&status);
        reclassify(&mut headers);
        Status::from_header_map(&headers).expect("a status")
    }

    #[test]
    fn decode_failures_become_invalid_argument() {
        // The texts tonic and tonic-prost produce today: a tonic upgrade that
        // changes them fails here, not silently in production.
        // A varint cut short, decoded as a real message.
        let decode_error = <prost_types::Duration as prost::Message>::decode(&b"\x08\xff"[..])
            .expect_err("a truncated varint");
        for status in [
            Status::internal(decode_error.to_string()),
            Status::internal("Unexpected EOF decoding stream."),
            Status::internal("Missing request message."),
        ] {
            let original = status.message().to_owned();
            let mapped = after(status);
            assert_eq!(mapped.code(), Code::InvalidArgument);
            assert!(mapped.message().ends_with(&original), "{mapped:?}");
        }
    }

    #[test]
    fn other_statuses_are_left_alone() {
        for status in [
            Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ),
            Status::internal("internal error"),
            Status::invalid_argument("failed to decode Protobuf message"),
            Status::not_found("failed to decode Protobuf message"),
        ] {
            let (code, message) = (status.code(), status.message().to_owned());
            let kept = after(status);
            assert_eq!((kept.code(), kept.message()), (code, message.as_str()));
        }
        let mut none = HeaderMap::new();
        reclassify(&mut none);
        assert!(none.is_empty(), "no status, nothing added");
    }
}
