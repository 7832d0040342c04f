//! Network-level bad input against every daemon: undecodable, truncated and oversized
//! gRPC messages, malformed gRPC frames (a length prefix longer than the stream, an
//! unknown or unsupported compression flag, an absurd length), unknown methods, callers
//! without a certificate, and bytes that are not TLS at all. Each gets a clear status
//! (or a closed connection), and the daemon keeps serving.

mod support;

use std::io::Write;
use std::time::Duration;

use custody_protocol::proto::custody_client::CustodyClient;
use custody_protocol::proto::signer_client::SignerClient;
use custody_protocol::proto::{IdentityRequest, ListKeysRequest};
use prost::bytes::{Buf, BufMut};
use support::Cluster;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;

/// Sends and receives raw message bytes (gRPC framing done by tonic).
#[derive(Debug, Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

async fn raw(
    channel: tonic::transport::Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(64 << 20);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .map(tonic::Response::into_inner)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn every_daemon_survives_bad_frames_and_strangers() {
    let c = Cluster::start("badinput", 3, 2);
    let coord = c.coordinator_addr();
    let signer = c.addr("signer-1");
    // (address, client certificate, a method of it, its largest accepted message)
    let daemons = [
        (
            coord.clone(),
            "operator",
            "/custody.v1.Custody/GetKey",
            2usize << 20,
        ),
        (
            signer.clone(),
            "coordinator",
            "/custody.v1.Signer/Commit",
            8 << 20,
        ),
    ];
    rt().block_on(async {
        for (addr, who, method, max) in &daemons {
            let ch = || async { c.channel(addr, Some(who)).await.expect("channel") };
            // Not a protobuf message (a field tag with wire type 7 does not exist).
            let st = raw(ch().await, method, vec![0xff; 40])
                .await
                .expect_err("undecodable");
            assert!(
                matches!(st.code(), Code::Internal | Code::InvalidArgument),
                "{addr} {method}: {st:?}"
            );
            // A protobuf message cut in the middle of a field.
            let st = raw(ch().await, method, vec![0x0a, 0x20, b'k', b'-'])
                .await
                .expect_err("truncated");
            assert!(
                matches!(st.code(), Code::Internal | Code::InvalidArgument),
                "{addr} {method}: {st:?}"
            );
            // Larger than the daemon takes.
            let st = raw(ch().await, method, vec![0x0a; max + 1024])
                .await
                .expect_err("oversized");
            assert!(
                matches!(
                    st.code(),
                    Code::ResourceExhausted | Code::OutOfRange | Code::Internal
                ),
                "{addr} oversized: {st:?}"
            );
            // A method that does not exist.
            let st = raw(ch().await, "/custody.v1.Custody/Nope", vec![])
                .await
                .expect_err("unknown method");
            assert_eq!(st.code(), Code::Unimplemented, "{addr}: {st:?}");
            // No client certificate: refused at the handshake or the first call.
            if let Ok(ch) = c.channel(addr, None).await {
                assert!(
                    raw(ch, method, vec![]).await.is_err(),
                    "{addr}: served a stranger"
                );
            }
            // Not TLS at all: the connection is dropped.
            {
                let mut s = std::net::TcpStream::connect(addr.as_str()).expect("tcp");
                s.set_write_timeout(Some(Duration::from_secs(5))).ok();
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02garbage");
            }
        }
        // Both still serve real clients.
        let mut op =
            CustodyClient::new(c.channel(&coord, Some("operator")).await.expect("operator"));
        op.list_keys(ListKeysRequest {})
            .await
            .expect("coordinator still serves");
        let mut s = SignerClient::new(
            c.channel(&signer, Some("coordinator"))
                .await
                .expect("coordinator"),
        );
        s.identity(IdentityRequest {})
            .await
            .expect("signer still serves");
    });
}

/// Sends `body` as the raw HTTP/2 body of a gRPC call to `path` (so the gRPC framing
/// itself can be wrong) and returns the call's `grpc-status` (headers or trailers).
async fn raw_frames(
    channel: tonic::transport::Channel,
    path: &str,
    body: Vec<u8>,
) -> Result<i32, String> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            prost::bytes::Bytes::from(body),
        )))
        .map_err(|e| e.to_string())?;
    let resp = channel.oneshot(req).await.map_err(|e| e.to_string())?;
    let status = |h: &tonic::codegen::http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
    };
    if let Some(s) = status(resp.headers()) {
        return Ok(s);
    }
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    collected
        .trailers()
        .and_then(status)
        .ok_or_else(|| "no grpc-status".to_string())
}

#[test]
fn malformed_grpc_frames_get_an_error_status_and_daemons_keep_serving() {
    let c = Cluster::start("badframes", 2, 2);
    let daemons = [
        (
            c.coordinator_addr(),
            "operator",
            "/custody.v1.Custody/ListKeys",
        ),
        (
            c.addr("signer-1"),
            "coordinator",
            "/custody.v1.Signer/Identity",
        ),
        (
            std::fs::read_to_string(c.dir.join("payments/listen-addr"))
                .unwrap()
                .trim()
                .to_string(),
            "payment-backend",
            "/custody.v1.Payments/ListBatches",
        ),
    ];
    let frame = |flag: u8, len: u32, payload: &[u8]| {
        let mut f = vec![flag];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    rt().block_on(async {
        for (addr, who, method) in &daemons {
            let ch = || async { c.channel(addr, Some(who)).await.expect("channel") };
            // A well-formed empty message works (the harness itself is right).
            assert_eq!(
                raw_frames(ch().await, method, frame(0, 0, &[])).await,
                Ok(0)
            );
            // INTERNAL (13) for broken framing, OUT_OF_RANGE (11) for a message longer
            // than the daemon takes.
            for (what, body, code) in [
                (
                    "a length prefix longer than the stream",
                    frame(0, 100, &[0; 10]),
                    13,
                ),
                ("a frame cut inside its prefix", vec![0, 0, 0], 13),
                (
                    "compressed without a grpc-encoding",
                    frame(1, 2, &[0x0a, 0x00]),
                    13,
                ),
                ("an unknown flag", frame(7, 0, &[]), 13),
                ("an absurd length", frame(0, u32::MAX, &[0; 16]), 11),
            ] {
                let st = raw_frames(ch().await, method, body).await;
                assert_eq!(st, Ok(code), "{addr} {method}, {what}");
            }
        }
        // Every daemon still serves a real client.
        for (addr, who, method) in &daemons {
            let ch = c.channel(addr, Some(who)).await.expect("channel");
            assert_eq!(
                raw_frames(ch, method, frame(0, 0, &[])).await,
                Ok(0),
                "{addr} after bad frames"
            );
        }
    });
}
