//! Network-level bad input against every daemon: undecodable, truncated and oversized
//! gRPC messages, unknown methods, callers without a certificate, and bytes that are
//! not TLS at all. Each gets a clear status (or a closed connection), and the daemon
//! keeps serving.

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
