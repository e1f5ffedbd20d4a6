//! The HTTP/1 framing guard in front of a gateway server's HTTP (docs/ingress.md,
//! "Hardening"). hyper frames a request that carries both `Content-Length` and
//! `Transfer-Encoding` by `Transfer-Encoding` and drops the `Content-Length` while it parses
//! (RFC 9112 §6.1 allows that), so the `Request` it hands Ward cannot show that the client sent
//! both. Envoy answers such a request 400, and so does Ward: [`Framer`] follows the framing of
//! the bytes a client sends (each request head with `httparse`, then its body by
//! `Content-Length` or chunked coding) and stops at a head that carries both; [`Guarded`]
//! never lets hyper read the bytes that complete that head. In their place hyper reads
//! [`STOP`], a NUL byte (which no HTTP/1 head may hold wherever it stands) and an empty line,
//! so hyper refuses the head it was reading with its own 400 and closes the connection, after
//! answering what came before it.
//!
//! The guard only adds refusals: whatever it does not follow (an h2 preface, a head hyper will
//! refuse itself, such as duplicate differing `Content-Length`, an obs-fold or bad chunking, or
//! the bytes after an upgrade) turns it into a pass-through for the rest of the connection, and
//! hyper's own checks apply. Every byte goes on to hyper as soon as it is read (a client that
//! stops mid-head meets hyper's header timeout as before); bodies are scanned in place, and only
//! a head that spans several reads is copied, to be parsed whole, up to [`MAX_HEAD`].

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest head the guard holds back: hyper's read buffer limit for a gateway server
/// (`crate::inbound_http::server`). A longer head is hyper's to refuse (431).
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// Header lines parsed per head; more is hyper's to refuse (its limit is 100).
const MAX_HEADERS: usize = 128;

/// What hyper reads in place of the bytes that complete a refused head: a NUL, which no
/// HTTP/1 head may hold wherever it stands, then an empty line, without which hyper would not
/// parse what it has (it parses a head once it sees where the head may end).
const STOP: &[u8] = b"\0\r\n\r\n";

/// A request head the guard refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The request's method.
    pub(crate) method: String,
    /// Its path, without the query (which may hold a token).
    pub(crate) path: String,
    /// Envoy's `response_code_details` for it.
    pub(crate) detail: &'static str,
}

/// Where the framing of a connection's bytes is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// At the start of a request head.
    Head,
    /// In a body of this many bytes still to come.
    Length(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// Not followed any more: hyper's checks alone apply.
    Blind,
    /// A head was refused; nothing from it on reaches hyper.
    Refused(Refused),
}

/// Where a chunked body is (RFC 9112 §7.1), as strictly as hyper's decoder reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// In the chunk size: its value so far and whether a digit was seen.
    Size(u64, bool),
    /// Whitespace after the size.
    SizeWs(u64),
    /// A chunk extension.
    Ext(u64),
    /// After the size line's CR.
    SizeLf(u64),
    /// In the chunk's data, this many bytes still to come.
    Data(u64),
    /// After the data: its CR.
    DataCr,
    /// After the data's CR.
    DataLf,
    /// At the start of a trailer line (or of the last empty line).
    Trailer,
    /// In a trailer line.
    TrailerLine,
    /// After a trailer line's CR.
    TrailerLf,
    /// After the last line's CR.
    EndLf,
}

/// What a complete head means.
enum Head {
    /// More bytes are needed.
    Partial,
    /// A head of this length, followed by a body in this state.
    Framed(usize, State),
    /// Refused.
    Refused(Refused),
    /// Not one to follow: hyper decides.
    Blind,
}

/// The framing of the requests on one connection: bytes in, how many of them may go on.
#[derive(Debug)]
pub(crate) struct Framer {
    pub(crate) state: State,
    /// The part of the current head that came in earlier reads (already gone on to hyper).
    partial: Vec<u8>,
}

impl Default for Framer {
    fn default() -> Framer {
        Framer {
            state: State::Head,
            partial: Vec::new(),
        }
    }
}

impl Framer {
    /// Follow `bytes`, which come after all the bytes given before; returns how many of them
    /// may go on to hyper: all of them, unless they complete a refused head (`self.state` is
    /// then [`State::Refused`]), whose part in `bytes` starts there.
    pub(crate) fn verify(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        loop {
            let rest = bytes.get(at..).unwrap_or_default();
            match &mut self.state {
                State::Blind => return bytes.len(),
                State::Refused(_) => return at,
                State::Head if rest.is_empty() => return at,
                State::Head => {
                    let earlier = self.partial.len();
                    let head = if earlier == 0 {
                        judge(rest)
                    } else {
                        let room = (MAX_HEAD + 1).saturating_sub(earlier).min(rest.len());
                        self.partial.extend_from_slice(&rest[..room]);
                        judge(&self.partial)
                    };
                    match head {
                        Head::Partial if earlier + rest.len() > MAX_HEAD => {
                            self.state = State::Blind;
                        }
                        Head::Partial => {
                            if earlier == 0 {
                                self.partial.extend_from_slice(rest);
                            }
                            return bytes.len();
                        }
                        Head::Framed(len, body) => {
                            at += len.saturating_sub(earlier);
                            self.state = body;
                        }
                        Head::Refused(r) => self.state = State::Refused(r),
                        Head::Blind => self.state = State::Blind,
                    }
                    self.partial = Vec::new();
                }
                State::Length(n) => {
                    let take = usize::try_from(*n).unwrap_or(usize::MAX).min(rest.len());
                    at += take;
                    *n -= take as u64;
                    if *n == 0 {
                        self.state = State::Head;
                    } else {
                        return at;
                    }
                }
                State::Chunked(c) => {
                    let (used, next) = chunked(*c, rest);
                    at += used;
                    match next {
                        Some(Some(c)) => {
                            self.state = State::Chunked(c);
                            return at;
                        }
                        Some(None) => self.state = State::Head,
                        None => self.state = State::Blind,
                    }
                }
            }
        }
    }
}

/// Follow a chunked body over `bytes` from `c`: how many bytes it used, and where it stopped:
/// `Some(Some(c))` still in the body (all bytes used), `Some(None)` at its end, `None` at
/// something hyper will refuse.
fn chunked(mut c: Chunk, bytes: &[u8]) -> (usize, Option<Option<Chunk>>) {
    let mut at = 0;
    while at < bytes.len() {
        if let Chunk::Data(n) = c {
            let take = usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(bytes.len() - at);
            at += take;
            let left = n - take as u64;
            c = if left == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data(left)
            };
            continue;
        }
        let b = bytes[at];
        at += 1;
        c = match (c, b) {
            (Chunk::Size(v, _), b) if b.is_ascii_hexdigit() => {
                let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                match v.checked_mul(16).and_then(|v| v.checked_add(digit)) {
                    Some(v) => Chunk::Size(v, true),
                    None => return (at, None),
                }
            }
            (Chunk::Size(v, true), b' ' | b'\t') | (Chunk::SizeWs(v), b' ' | b'\t') => {
                Chunk::SizeWs(v)
            }
            (Chunk::Size(v, true), b';') | (Chunk::SizeWs(v), b';') => Chunk::Ext(v),
            (Chunk::Size(v, true) | Chunk::SizeWs(v) | Chunk::Ext(v), b'\r') => Chunk::SizeLf(v),
            (Chunk::Ext(_), b'\n') => return (at, None),
            (Chunk::Ext(v), _) => Chunk::Ext(v),
            (Chunk::SizeLf(0), b'\n') => Chunk::Trailer,
            (Chunk::SizeLf(v), b'\n') => Chunk::Data(v),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Size(0, false),
            (Chunk::Trailer, b'\r') => Chunk::EndLf,
            (Chunk::TrailerLine, b'\r') => Chunk::TrailerLf,
            (Chunk::Trailer | Chunk::TrailerLine, b'\n') => return (at, None),
            (Chunk::Trailer | Chunk::TrailerLine, _) => Chunk::TrailerLine,
            (Chunk::TrailerLf, b'\n') => Chunk::Trailer,
            (Chunk::EndLf, b'\n') => return (at, Some(None)),
            _ => return (at, None),
        };
    }
    (at, Some(Some(c)))
}

/// Judge the head at the start of `bytes`.
fn judge(bytes: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Blind,
    };
    let mut length: Option<u64> = None;
    let mut te = false;
    let mut chunked = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = content_length(h.value) else {
                return Head::Blind;
            };
            if length.is_some_and(|l| l != n) {
                return Head::Blind;
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            chunked = last_is_chunked(h.value);
        }
    }
    if te && length.is_some() {
        let path = req.path.unwrap_or_default();
        return Head::Refused(Refused {
            method: req.method.unwrap_or_default().to_owned(),
            path: path.split('?').next().unwrap_or_default().to_owned(),
            detail: "http1.content_length_and_chunked_not_allowed",
        });
    }
    if te && !chunked {
        return Head::Blind;
    }
    // What follows an upgrade request may be another protocol's bytes: not followed.
    if req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
    {
        return Head::Blind;
    }
    let body = if te {
        State::Chunked(Chunk::Size(0, false))
    } else {
        match length {
            Some(n) if n > 0 => State::Length(n),
            _ => State::Head,
        }
    };
    Head::Framed(len, body)
}

/// A `Content-Length` value: digits only, as hyper reads it.
fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Whether a `Transfer-Encoding` value ends with `chunked`.
fn last_is_chunked(v: &[u8]) -> bool {
    v.rsplit(|b| *b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A connection whose reads pass through a [`Framer`] (the module doc says how).
pub(crate) struct Guarded<I> {
    io: I,
    framer: Framer,
    /// How much of [`STOP`] hyper has read.
    stopped: usize,
    /// The refused head, for the access log.
    refused: Arc<OnceLock<Refused>>,
}

impl<I> Guarded<I> {
    pub(crate) fn new(io: I) -> Guarded<I> {
        Guarded {
            io,
            framer: Framer::default(),
            stopped: 0,
            refused: Arc::default(),
        }
    }

    /// Where the refused head (if any) is found once hyper is done with the connection.
    pub(crate) fn verdict(&self) -> Arc<OnceLock<Refused>> {
        self.refused.clone()
    }

    /// Give hyper what is left of [`STOP`].
    fn stop(&mut self, buf: &mut ReadBuf<'_>) {
        let rest = STOP.get(self.stopped..).unwrap_or_default();
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.stopped += n;
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &this.framer.state {
            State::Blind => return Pin::new(&mut this.io).poll_read(cx, buf),
            State::Refused(_) => {
                // The rest of STOP, then the end of the stream.
                this.stop(buf);
                return Poll::Ready(Ok(()));
            }
            _ => {}
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let filled = buf.filled().len();
        let ok = this.framer.verify(&buf.filled()[before..]);
        if before + ok < filled {
            buf.set_filled(before + ok);
        }
        if let State::Refused(r) = &this.framer.state {
            let _ = this.refused.set(r.clone());
            this.stop(buf);
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feed `input` in reads of `step` bytes; returns the bytes that went on and the final
    /// state.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, State) {
        let mut f = Framer::default();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            let ok = f.verify(piece);
            out.extend_from_slice(&piece[..ok]);
            if matches!(f.state, State::Refused(_)) {
                break;
            }
        }
        (out, f.state)
    }

    const CL_TE: &[u8] = b"POST /a?token=x HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    /// The length of `CL_TE`'s head.
    const CL_TE_HEAD: usize = 85;

    /// (name, input, the refused head's start and end in it (else every byte goes on), the
    /// state after).
    type Case = (&'static str, Vec<u8>, Option<(usize, usize)>, Option<State>);

    #[test]
    fn the_table() {
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".as_slice();
        let post = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".as_slice();
        let chunked = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\n".as_slice();
        let te_cl =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"
                .as_slice();
        let any_case =
            b"POST / HTTP/1.1\r\ncontent-LENGTH: 3\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
                .as_slice();
        let head = State::Head;
        let blind = State::Blind;
        let cases: Vec<Case> = vec![
            ("a GET", get.to_vec(), None, Some(head.clone())),
            (
                "a POST with a length",
                post.to_vec(),
                None,
                Some(head.clone()),
            ),
            (
                "a chunked POST with trailers",
                chunked.to_vec(),
                None,
                Some(head.clone()),
            ),
            (
                "pipelined",
                [get, post, chunked, get].concat(),
                None,
                Some(head.clone()),
            ),
            ("CL+TE", CL_TE.to_vec(), Some((0, CL_TE_HEAD)), None),
            (
                "an upgrade, then another protocol's bytes that look like a CL+TE head",
                [
                    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                        .as_slice(),
                    CL_TE,
                ]
                .concat(),
                None,
                Some(blind.clone()),
            ),
            ("TE+CL", te_cl.to_vec(), Some((0, te_cl.len() - 5)), None),
            (
                "CL+TE, names in any case",
                any_case.to_vec(),
                Some((0, any_case.len())),
                None,
            ),
            (
                "CL+TE after good requests",
                [get, post, CL_TE].concat(),
                Some((get.len() + post.len(), get.len() + post.len() + CL_TE_HEAD)),
                None,
            ),
            (
                "CL+TE in a body is body",
                [
                    &b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n"[..],
                    &CL_TE[..100],
                ]
                .concat(),
                None,
                Some(head.clone()),
            ),
            (
                "an incomplete head",
                b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec(),
                None,
                Some(head),
            ),
            (
                "a body still to come",
                b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
                None,
                Some(State::Length(7)),
            ),
            (
                "the h2 preface is hyper's",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                None,
                Some(blind.clone()),
            ),
            (
                "differing lengths are hyper's",
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(),
                None,
                Some(blind.clone()),
            ),
            (
                "obs-fold is hyper's",
                b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n".to_vec(),
                None,
                Some(blind.clone()),
            ),
            (
                "bad chunking is hyper's",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
                None,
                Some(blind.clone()),
            ),
            (
                "a chunk size that overflows is hyper's",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n"
                    .to_vec(),
                None,
                Some(blind.clone()),
            ),
            (
                "TE without chunked last is hyper's",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(),
                None,
                Some(blind),
            ),
        ];
        for (name, input, refused, after) in cases {
            for step in [1, 7, input.len()] {
                let (out, state) = run(&input, step);
                assert_eq!(out, input[..out.len()], "{name}");
                match refused {
                    // What completes the head never goes on; every byte before the read
                    // that completes it does, and so does what that read has before it.
                    Some((start, end)) => {
                        assert!(
                            matches!(&state, State::Refused(r) if r.detail == "http1.content_length_and_chunked_not_allowed"),
                            "{name} (step {step}): {state:?}"
                        );
                        let completing_read = (end - 1) / step * step;
                        assert_eq!(
                            out.len(),
                            start.max(completing_read),
                            "{name} (step {step})"
                        );
                    }
                    None => {
                        assert_eq!(out.len(), input.len(), "{name} (step {step}): {state:?}");
                        assert_eq!(Some(&state), after.as_ref(), "{name} (step {step})");
                    }
                }
            }
        }
    }

    #[test]
    fn a_refusal_names_the_request_without_its_query() {
        let (_, state) = run(CL_TE, CL_TE.len());
        let State::Refused(r) = state else {
            panic!("{state:?}")
        };
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/a"));
    }

    #[test]
    fn an_endless_head_is_left_to_hyper() {
        let mut input = b"GET / HTTP/1.1\r\n".to_vec();
        input.extend(std::iter::repeat_n(b"X-A: b\r\n", MAX_HEAD / 8 + 1).flatten());
        let (out, state) = run(&input, 4096);
        assert_eq!(state, State::Blind);
        assert_eq!(out.len(), input.len());
    }

    #[tokio::test]
    async fn hyper_reads_what_came_before_then_the_stop() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for split in [None, Some(40)] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut g = Guarded::new(server);
            let verdict = g.verdict();
            let mut sent = b"GET / HTTP/1.1\r\n\r\n".to_vec();
            sent.extend_from_slice(CL_TE);
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            match split {
                // The bad head comes in two reads: its first part goes on.
                Some(at) => {
                    client.write_all(&sent[..at]).await.unwrap();
                    let n = g.read(&mut buf).await.unwrap();
                    seen.extend_from_slice(&buf[..n]);
                    client.write_all(&sent[at..]).await.unwrap();
                }
                None => client.write_all(&sent).await.unwrap(),
            }
            loop {
                let n = g.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            let before = split.unwrap_or(18);
            assert_eq!(seen, [&sent[..before], STOP].concat(), "{split:?}");
            assert_eq!(verdict.get().map(|r| r.path.as_str()), Some("/a"));
            // Writes go through.
            g.write_all(b"answer").await.unwrap();
            g.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"answer");
        }
    }

    /// hyper behind the guard, as a gateway server runs it: the request before the refused
    /// head is answered, then hyper's own 400, then the connection ends; nothing after it is
    /// served. The bad head comes whole, or in pieces (the first of which hyper has read).
    #[tokio::test]
    async fn hyper_answers_400_in_place_of_the_refused_head() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for split in [None, Some(30), Some(60)] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let served = Arc::new(std::sync::Mutex::new(Vec::new()));
            let svc = {
                let served = served.clone();
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    served.lock().unwrap().push(req.uri().path().to_owned());
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Empty::<bytes::Bytes>::new(),
                        ))
                    }
                })
            };
            let task = tokio::spawn(async move {
                let _ = crate::inbound_http::edge_server()
                    .serve_connection(hyper_util::rt::TokioIo::new(Guarded::new(server)), svc)
                    .await;
            });
            let mut sent = b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
            sent.extend_from_slice(CL_TE);
            match split {
                Some(at) => {
                    client.write_all(&sent[..at]).await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    client.write_all(&sent[at..]).await.unwrap();
                }
                None => client.write_all(&sent).await.unwrap(),
            }
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            task.await.unwrap();
            let got = String::from_utf8_lossy(&got);
            assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{split:?}: {got}");
            assert_eq!(
                got.matches("HTTP/1.1 400 Bad Request\r\n").count(),
                1,
                "{split:?}: {got}"
            );
            assert_eq!(*served.lock().unwrap(), ["/first"], "{split:?}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_any_split(input in proptest::collection::vec(any::<u8>(), 0..512), step in 1usize..64) {
            let (out, _) = run(&input, step);
            prop_assert!(out.len() <= input.len());
            prop_assert_eq!(&out[..], &input[..out.len()]);
        }

        #[test]
        fn heads_with_random_bodies(body in proptest::collection::vec(any::<u8>(), 0..256), step in 1usize..64) {
            let mut input = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            input.extend_from_slice(&body);
            input.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            let (out, state) = run(&input, step);
            prop_assert_eq!(out.len(), input.len());
            prop_assert_eq!(state, State::Head);
        }
    }
}
