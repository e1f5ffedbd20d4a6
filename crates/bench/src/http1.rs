//! The few bytes of HTTP/1.1 the harness speaks: one GET shape and one 200 response with a
//! fixed-length body. Shared by the server (`serve`) and the load generator, so both agree.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Size of every response body (the "1 KB HTTP/1.1").
pub(crate) const BODY_LEN: usize = 1024;

/// A keep-alive GET.
pub(crate) const GET_KEEPALIVE: &[u8] = b"GET /1k HTTP/1.1\r\nHost: bench\r\n\r\n";

/// A GET that asks the server to close after answering (one connection per request).
pub(crate) const GET_CLOSE: &[u8] = b"GET /1k HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

/// The two requests a path is sent: [`GET_KEEPALIVE`] and [`GET_CLOSE`], plus any headers the
/// path needs (the ward-l7 path's bearer token). Cheap to clone into every load task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requests {
    /// The keep-alive GET.
    pub(crate) keepalive: Arc<[u8]>,
    /// The GET asking the server to close.
    pub(crate) close: Arc<[u8]>,
}

impl Requests {
    /// The requests with no extra header.
    pub(crate) fn plain() -> Requests {
        Requests {
            keepalive: GET_KEEPALIVE.into(),
            close: GET_CLOSE.into(),
        }
    }

    /// The requests with `extra` (whole header lines, each ending in CRLF) added to the head.
    pub(crate) fn with_headers(extra: &str) -> Requests {
        let add = |req: &[u8]| -> Arc<[u8]> {
            // Both constants end with the blank line: insert before it.
            let head = req.strip_suffix(b"\r\n").unwrap_or(req);
            [head, extra.as_bytes(), b"\r\n"].concat().into()
        };
        Requests {
            keepalive: add(GET_KEEPALIVE),
            close: add(GET_CLOSE),
        }
    }
}

/// Heads larger than this are refused, so a broken peer cannot make a buffer grow unbounded.
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponseError {
    /// The status line is not `HTTP/1.1 200`.
    #[error("response status is not HTTP/1.1 200")]
    NotOk,
    /// No parseable `Content-Length` header.
    #[error("response has no valid Content-Length")]
    NoLength,
    /// The head did not end within [`MAX_HEAD`] bytes.
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The peer closed the connection before the response was complete.
    #[error("connection closed mid-response")]
    Closed,
    /// A socket error.
    #[error("reading the response: {0}")]
    Io(#[from] std::io::Error),
}

/// The index just past the blank line ending a message head, if `buf` holds a whole head.
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Checks a response head (status 200) and returns its Content-Length.
pub(crate) fn parse_response_head(head: &[u8]) -> Result<usize, ResponseError> {
    let text = std::str::from_utf8(head).map_err(|_| ResponseError::NotOk)?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(ResponseError::NotOk);
    }
    lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .ok_or(ResponseError::NoLength)
}

/// Whether a request head carries `Connection: close`.
pub(crate) fn wants_close(head: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(head) else {
        return true;
    };
    text.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("connection")
                && value.trim().eq_ignore_ascii_case("close")
        })
}

/// Reads one whole response from `stream`. `buf` carries bytes read past the end of a response
/// over to the next call. Returns when the first byte of this response arrived (for TTFB).
pub(crate) async fn read_response<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Instant, ResponseError> {
    let mut first_byte = (!buf.is_empty()).then(Instant::now);
    let total = loop {
        if let Some(end) = head_end(buf) {
            break end + parse_response_head(&buf[..end])?;
        }
        if buf.len() > MAX_HEAD {
            return Err(ResponseError::HeadTooLarge);
        }
        fill(stream, buf).await?;
        first_byte.get_or_insert_with(Instant::now);
    };
    while buf.len() < total {
        fill(stream, buf).await?;
    }
    buf.drain(..total);
    // Invariant: set above, either because buf held bytes or after the first successful fill.
    Ok(first_byte.unwrap_or_else(Instant::now))
}

async fn fill<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), ResponseError> {
    buf.reserve(4096);
    match stream.read_buf(buf).await? {
        0 => Err(ResponseError::Closed),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn response_heads() {
        let cases: &[(&[u8], Option<usize>)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n",
                Some(1024),
            ),
            (b"HTTP/1.1 200 OK\r\ncontent-length:  7 \r\n\r\n", Some(7)),
            (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", None),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                None,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", None),
        ];
        for (head, want) in cases {
            assert_eq!(parse_response_head(head).ok(), *want, "{head:?}");
        }
    }

    #[test]
    fn close_detection() {
        let cases: &[(&[u8], bool)] = &[
            (GET_KEEPALIVE, false),
            (GET_CLOSE, true),
            (b"GET / HTTP/1.1\r\nconnection: Close\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", false),
        ];
        for (head, want) in cases {
            assert_eq!(wants_close(head), *want, "{head:?}");
        }
    }

    #[tokio::test]
    async fn reads_back_to_back_responses() {
        let one = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        let wire = format!("{one}{one}");
        let mut stream = wire.as_bytes();
        let mut buf = Vec::new();
        read_response(&mut stream, &mut buf).await.unwrap();
        read_response(&mut stream, &mut buf).await.unwrap();
        assert!(buf.is_empty());
        assert!(matches!(
            read_response(&mut stream, &mut buf).await,
            Err(ResponseError::Closed)
        ));
    }

    #[test]
    fn extra_headers_stay_inside_the_head() {
        let cases: &[(&str, &[u8], &[u8])] = &[
            ("", GET_KEEPALIVE, GET_CLOSE),
            (
                "x-a: 1\r\n",
                b"GET /1k HTTP/1.1\r\nHost: bench\r\nx-a: 1\r\n\r\n",
                b"GET /1k HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nx-a: 1\r\n\r\n",
            ),
        ];
        for (extra, keepalive, close) in cases {
            let r = Requests::with_headers(extra);
            assert_eq!(&*r.keepalive, *keepalive);
            assert_eq!(&*r.close, *close);
            assert!(wants_close(&r.close));
            assert!(!wants_close(&r.keepalive));
        }
        assert_eq!(Requests::plain(), Requests::with_headers(""));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_response_head(&bytes);
            let _ = wants_close(&bytes);
            let _ = head_end(&bytes);
        }
    }
}
