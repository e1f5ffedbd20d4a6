//! The config stream's responses on the wire, without a copy of the large sections per proxy.
//!
//! tonic's server encodes each message into a buffer that the stream keeps for its whole life,
//! grown to the largest message it sent: a proxy's first configuration holds the mesh
//! directory and its service table, so every connected proxy pinned a buffer as large as its
//! whole configuration (docs/multi-host.md, "Memory"). Here a response is framed by hand
//! (gRPC's length-prefixed message, <https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>)
//! as a list of pieces: the small protobuf fields are encoded, and each section's body is the
//! section's own shared `Bytes`, handed to HTTP/2 as it is. The bytes are exactly those prost
//! encodes for the same `ConfigResponse` (the tests decode them with prost).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use hyper::body::Frame;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::Status;
use ward_wire::ward::config::v1::{ConfigResponse, Section as WireSection};

use crate::push::Section;

/// `ConfigResponse.sections` and `Section.body` (crates/wire/proto/ward/config/v1/config.proto).
const SECTIONS_FIELD: u32 = 3;
const BODY_FIELD: u32 = 3;
/// gRPC's message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// One response, framed: its pieces in order, and the protobuf message's length.
#[derive(Debug)]
pub(crate) struct Framed {
    pieces: Vec<Bytes>,
    /// The message's encoded length (without gRPC's 5-byte prefix).
    pub(crate) message_len: usize,
}

/// A response that cannot be framed: longer than gRPC's 4 GiB length prefix.
#[derive(Debug, thiserror::Error)]
#[error("config response of {0} bytes is longer than a gRPC message can be")]
pub(crate) struct TooLong(usize);

/// Frames `shell` (a response whose `sections` is empty) with `sections` appended, each
/// section's body shared rather than copied.
pub(crate) fn frame(
    shell: &ConfigResponse,
    sections: &[(&str, &Section)],
) -> Result<Framed, TooLong> {
    debug_assert!(shell.sections.is_empty());
    let heads: Vec<(WireSection, usize)> = sections
        .iter()
        .map(|(name, s)| {
            let head = WireSection {
                name: (*name).to_owned(),
                hash: s.hash.clone(),
                body: Vec::new(),
            };
            let len = head.encoded_len() + body_field_len(s.body.len());
            (head, len)
        })
        .collect();
    let message_len = shell.encoded_len()
        + heads
            .iter()
            .map(|(_, len)| key_len(SECTIONS_FIELD) + encoded_len_varint(*len as u64) + len)
            .sum::<usize>();
    let prefix_len = u32::try_from(message_len).map_err(|_| TooLong(message_len))?;
    let mut buf = BytesMut::with_capacity(PREFIX + shell.encoded_len() + 96 * heads.len());
    buf.put_u8(0);
    buf.put_u32(prefix_len);
    buf.extend_from_slice(&shell.encode_to_vec());
    let mut pieces = Vec::with_capacity(2 * heads.len() + 1);
    for ((head, len), (_, section)) in heads.iter().zip(sections) {
        encode_key(SECTIONS_FIELD, WireType::LengthDelimited, &mut buf);
        encode_varint(*len as u64, &mut buf);
        buf.extend_from_slice(&head.encode_to_vec());
        if !section.body.is_empty() {
            encode_key(BODY_FIELD, WireType::LengthDelimited, &mut buf);
            encode_varint(section.body.len() as u64, &mut buf);
            pieces.push(buf.split().freeze());
            pieces.push(section.body.clone());
        }
    }
    if !buf.is_empty() {
        pieces.push(buf.freeze());
    }
    Ok(Framed {
        pieces,
        message_len,
    })
}

/// The length of a `bytes` field holding `len` bytes (proto3 omits an empty one).
fn body_field_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(BODY_FIELD) + encoded_len_varint(len as u64) + len
    }
}

/// What a stream's task hands its response body.
#[derive(Debug)]
pub(crate) enum Out {
    /// A response to send.
    Message(Framed),
    /// The stream ends with this status (in the trailers).
    End(Status),
}

/// The body of a config stream's HTTP/2 response: the framed responses its task sends, then
/// the trailers (`grpc-status` 0 when the task ends without a status).
#[derive(Debug)]
pub(crate) struct StreamBody {
    rx: mpsc::Receiver<Out>,
    queue: VecDeque<Bytes>,
    done: bool,
}

impl StreamBody {
    pub(crate) fn new(rx: mpsc::Receiver<Out>) -> StreamBody {
        StreamBody {
            rx,
            queue: VecDeque::new(),
            done: false,
        }
    }
}

/// The trailers that end a stream with `status`.
fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // A message that cannot be a header value: send the code alone.
        map.clear();
        map.insert("grpc-status", HeaderValue::from(i32::from(status.code())));
    }
    map
}

impl hyper::body::Body for StreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if let Some(piece) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Out::Message(framed))) => this.queue.extend(framed.pieces),
                Poll::Ready(Some(Out::End(status))) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn section(body: &[u8]) -> Section {
        Section::new(body.to_vec())
    }

    fn joined(framed: &Framed) -> Vec<u8> {
        framed
            .pieces
            .iter()
            .flat_map(|p| p.iter().copied())
            .collect()
    }

    #[test]
    fn a_framed_response_is_the_message_prost_encodes_with_bodies_shared() {
        let big = section(&vec![b'x'; 300_000]);
        let small = section(b"{\"a\":1}");
        let empty = section(b"");
        let shell = ConfigResponse {
            version_info: "v1".into(),
            nonce: "7".into(),
            sections: Vec::new(),
            removed: vec!["gone".into()],
            generation: 3,
        };
        let named = [("directory", &big), ("authz", &small), ("jwtRules", &empty)];
        let framed = frame(&shell, &named).unwrap();
        let bytes = joined(&framed);
        assert_eq!(bytes[0], 0, "not compressed");
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - PREFIX);
        assert_eq!(len, framed.message_len);
        let decoded = ConfigResponse::decode(&bytes[PREFIX..]).unwrap();
        let expected = ConfigResponse {
            sections: named
                .iter()
                .map(|(n, s)| WireSection {
                    name: (*n).to_owned(),
                    hash: s.hash.clone(),
                    body: s.body.to_vec(),
                })
                .collect(),
            ..shell
        };
        assert_eq!(decoded, expected);
        assert_eq!(framed.message_len, expected.encoded_len());
        // The large body is the section's own buffer, not a copy.
        assert!(framed
            .pieces
            .iter()
            .any(|p| p.as_ptr() == big.body.as_ptr() && p.len() == big.body.len()));
    }

    #[test]
    fn a_response_without_sections_is_one_piece() {
        let shell = ConfigResponse {
            version_info: "v".into(),
            ..Default::default()
        };
        let framed = frame(&shell, &[]).unwrap();
        assert_eq!(framed.pieces.len(), 1);
        let bytes = joined(&framed);
        assert_eq!(ConfigResponse::decode(&bytes[PREFIX..]).unwrap(), shell);
    }

    #[tokio::test]
    async fn the_body_sends_each_response_then_the_trailers() {
        let (tx, rx) = mpsc::channel(4);
        let shell = ConfigResponse {
            nonce: "1".into(),
            ..Default::default()
        };
        let s = section(b"body");
        tx.send(Out::Message(frame(&shell, &[("a", &s)]).unwrap()))
            .await
            .unwrap();
        tx.send(Out::End(Status::not_found("workload gone")))
            .await
            .unwrap();
        drop(tx);
        let collected = StreamBody::new(rx).collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "5");
        assert_eq!(trailers["grpc-message"], "workload%20gone");
        let bytes = collected.to_bytes();
        let decoded = ConfigResponse::decode(&bytes[PREFIX..]).unwrap();
        assert_eq!(decoded.nonce, "1");
        assert_eq!(decoded.sections[0].body, b"body");

        let (tx, rx) = mpsc::channel(1);
        drop(tx);
        let collected = StreamBody::new(rx).collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    }
}
