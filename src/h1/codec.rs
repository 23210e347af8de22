//! HTTP/1.1 message heads and bodies, read and written as bytes.
//!
//! Request heads are parsed strictly: anything two parsers could read two ways
//! (Content-Length beside Transfer-Encoding, a repeated Content-Length, bare LF line
//! ends, an encoding other than `chunked`) is refused rather than normalised, so what
//! the upstream sees is exactly what the proxy saw. Header values are slices of the
//! buffer they arrived in, never copied.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use smallvec::SmallVec;

/// Headers a head may carry.
pub const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Why a request head was refused; each maps to one status.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Malformed or ambiguous: 400.
    Bad(&'static str),
    /// Past `limits.max_header_bytes` or [`MAX_HEADERS`]: 431.
    TooLarge,
    /// An HTTP version other than 1.0 and 1.1: 505.
    Version,
}

/// A parsed request head.
pub struct RequestHead {
    pub parts: http::request::Parts,
    pub framing: Framing,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// A parsed response head.
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The upstream will keep the connection open after this response.
    pub keep_alive: bool,
}

/// Where one header sits in the buffer.
#[derive(Clone, Copy)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

/// The parsed headers as offsets, so the buffer can be frozen and sliced (on the
/// stack for the usual number of headers).
fn spans_of(buf: &[u8], headers: &[httparse::Header<'_>]) -> SmallVec<[Span; 32]> {
    headers
        .iter()
        .map(|h| Span {
            name: offset(buf, h.name.as_bytes()),
            value: offset(buf, h.value),
        })
        .collect()
}

fn offset(base: &[u8], part: &[u8]) -> (usize, usize) {
    (part.as_ptr() as usize - base.as_ptr() as usize, part.len())
}

/// Whether the head has a line ending in LF without CR before it.
fn has_bare_lf(head: &[u8]) -> bool {
    let mut from = 0;
    while let Some(i) = head[from..].iter().position(|&b| b == b'\n') {
        let at = from + i;
        if at == 0 || head[at - 1] != b'\r' {
            return true;
        }
        from = at + 1;
    }
    false
}

/// Whether the request line is well formed but for its version
/// (`METHOD SP target SP HTTP/x.y`): 505 rather than 400.
fn names_a_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(_), Some(_), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    version.len() == 8
        && version.starts_with(b"HTTP/")
        && version[5].is_ascii_digit()
        && version[6] == b'.'
        && version[7].is_ascii_digit()
}

/// What the framing headers of a message said.
#[derive(Default)]
struct FramingHeaders {
    lengths: usize,
    length: Option<u64>,
    bad_length: bool,
    encodings: usize,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl FramingHeaders {
    fn see(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == header::CONTENT_LENGTH {
            self.lengths += 1;
            match parse_length(value) {
                Some(n) => self.length = Some(n),
                None => self.bad_length = true,
            }
        } else if *name == header::TRANSFER_ENCODING {
            self.encodings += 1;
            self.chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if *name == header::CONNECTION {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if *name == header::EXPECT {
            self.expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
}

/// `1*DIGIT`, nothing else (no sign, no spaces inside, no list).
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Takes one request head off the front of `buf`. `Ok(None)`: not all of it is
/// here yet (and it is still under `max_bytes`).
pub fn parse_request(
    buf: &mut BytesMut,
    max_bytes: usize,
) -> Result<Option<RequestHead>, HeadError> {
    let mut raw = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let (len, spans, method, target, version) = {
        let mut req = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, buf, &mut raw);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                return if buf.len() >= max_bytes {
                    Err(HeadError::TooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(httparse::Error::Version) if names_a_version(buf) => {
                return Err(HeadError::Version)
            }
            Err(_) => return Err(HeadError::Bad("malformed request head")),
        };
        if len > max_bytes {
            return Err(HeadError::TooLarge);
        }
        if has_bare_lf(&buf[..len]) {
            return Err(HeadError::Bad("bare LF in request head"));
        }
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Err(HeadError::Bad("malformed request head"));
        };
        let spans = spans_of(buf, req.headers);
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| HeadError::Bad("malformed method"))?;
        (len, spans, method, offset(buf, path.as_bytes()), version)
    };
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| HeadError::Bad("malformed request target"))?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut framing = FramingHeaders::default();
    for span in &spans {
        let name = HeaderName::from_bytes(&head[span.name.0..span.name.0 + span.name.1])
            .map_err(|_| HeadError::Bad("malformed header name"))?;
        let value = head.slice(span.value.0..span.value.0 + span.value.1);
        framing.see(&name, &value);
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| HeadError::Bad("malformed header value"))?;
        headers.append(name, value);
    }
    let version = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if framing.bad_length || framing.lengths > 1 {
        return Err(HeadError::Bad("invalid or repeated Content-Length"));
    }
    let body = if framing.encodings > 0 {
        if framing.lengths > 0 {
            return Err(HeadError::Bad("both Content-Length and Transfer-Encoding"));
        }
        if framing.encodings > 1 || !framing.chunked || version == Version::HTTP_10 {
            return Err(HeadError::Bad("unsupported Transfer-Encoding"));
        }
        Framing::Chunked
    } else {
        match framing.length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    let keep_alive = match version {
        Version::HTTP_10 => framing.keep_alive && !framing.close,
        _ => !framing.close,
    };
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(Some(RequestHead {
        parts: req.into_parts().0,
        framing: body,
        keep_alive,
        expect_continue: framing.expect_continue && version == Version::HTTP_11,
    }))
}

/// Why an upstream's response head was refused (answered 502).
#[derive(Debug, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Takes one response head off the front of `buf`; `request` is the method it
/// answers (a response to HEAD has no body).
pub fn parse_response(
    buf: &mut BytesMut,
    max_bytes: usize,
    request: &Method,
) -> Result<Option<ResponseHead>, BadResponse> {
    let mut raw = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let (len, spans, code, version) = {
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut raw);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                return if buf.len() >= max_bytes {
                    Err(BadResponse("response head too large"))
                } else {
                    Ok(None)
                };
            }
            Err(_) => return Err(BadResponse("malformed response head")),
        };
        let (Some(code), Some(version)) = (resp.code, resp.version) else {
            return Err(BadResponse("malformed response head"));
        };
        (len, spans_of(buf, resp.headers), code, version)
    };
    let status = StatusCode::from_u16(code).map_err(|_| BadResponse("invalid status code"))?;
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len() + 4);
    let mut framing = FramingHeaders::default();
    let mut first_length: Option<u64> = None;
    for span in &spans {
        let name = HeaderName::from_bytes(&head[span.name.0..span.name.0 + span.name.1])
            .map_err(|_| BadResponse("malformed header name"))?;
        let value = head.slice(span.value.0..span.value.0 + span.value.1);
        framing.see(&name, &value);
        if name == header::CONTENT_LENGTH {
            // Identical repeats are one length; differing ones are no length at all.
            match (first_length, framing.length) {
                (Some(a), Some(b)) if a != b => {
                    return Err(BadResponse("conflicting Content-Length"))
                }
                (Some(_), _) => continue,
                _ => first_length = framing.length,
            }
        }
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| BadResponse("malformed header value"))?;
        headers.append(name, value);
    }
    if framing.bad_length {
        return Err(BadResponse("invalid Content-Length"));
    }
    let bodiless = *request == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = if bodiless {
        Framing::Empty
    } else if framing.encodings > 0 {
        if framing.lengths > 0 {
            return Err(BadResponse("both Content-Length and Transfer-Encoding"));
        }
        // Any coding but a lone `chunked` would reach the client undeclared once
        // the hop-by-hop Transfer-Encoding is dropped.
        if !(framing.chunked && framing.encodings == 1) {
            return Err(BadResponse("unsupported Transfer-Encoding"));
        }
        Framing::Chunked
    } else {
        match framing.length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let keep_alive = body != Framing::Close
        && match version {
            0 => framing.keep_alive && !framing.close,
            _ => !framing.close,
        };
    Ok(Some(ResponseHead {
        status,
        headers,
        framing: body,
        keep_alive,
    }))
}

fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes a request head for the upstream (HTTP/1.1, origin form). The caller has
/// removed every hop-by-hop header; the body's framing is added here.
pub fn write_request(out: &mut Vec<u8>, parts: &http::request::Parts, framing: Framing) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    put_headers(out, &parts.headers);
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body travels to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// As the upstream framed it by length (or no body).
    AsIs,
    /// Re-framed in chunks.
    Chunked,
    /// Raw, delimited by closing the connection (HTTP/1.0 clients, or an upstream
    /// that closes to end its body).
    UntilClose,
}

/// Writes a response head for the client. `close` adds `Connection: close`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    outgoing: Outgoing,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    put_headers(out, headers);
    if outgoing == Outgoing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close && status != StatusCode::SWITCHING_PROTOCOLS {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Where a chunked decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

/// Decodes a chunked body incrementally; chunk extensions and trailers are
/// dropped.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: Chunk,
}

/// The chunked framing is broken.
#[derive(Debug, PartialEq, Eq)]
pub struct BadChunk;

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: Chunk::Size }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Consumes what it can of `buf`, handing each piece of data to `data`. Returns
    /// when the body is done or `buf` holds no complete step.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        mut data: impl FnMut(&[u8]),
    ) -> Result<(), BadChunk> {
        loop {
            match self.state {
                Chunk::Done => return Ok(()),
                Chunk::Size => {
                    let Some(end) = find_crlf(buf)? else {
                        return Ok(());
                    };
                    let line = &buf[..end];
                    let digits = line
                        .split(|&b| b == b';')
                        .next()
                        .unwrap_or(&[])
                        .trim_ascii_end();
                    if digits.is_empty()
                        || digits.len() > 15
                        || !digits.iter().all(u8::is_ascii_hexdigit)
                    {
                        return Err(BadChunk);
                    }
                    let size = digits.iter().fold(0u64, |n, &d| {
                        n * 16 + (d as char).to_digit(16).unwrap_or(0) as u64
                    });
                    buf.advance(end + 2);
                    self.state = if size == 0 {
                        Chunk::Trailer
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        return Ok(());
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    data(&buf[..n]);
                    buf.advance(n);
                    self.state = if n as u64 == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n as u64)
                    };
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(());
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BadChunk);
                    }
                    buf.advance(2);
                    self.state = Chunk::Size;
                }
                Chunk::Trailer => {
                    let Some(end) = find_crlf(buf)? else {
                        return Ok(());
                    };
                    buf.advance(end + 2);
                    if end == 0 {
                        self.state = Chunk::Done;
                    }
                }
            }
        }
    }
}

/// The index of the first CRLF in `buf`; a bare LF, or no line end within
/// [`MAX_CHUNK_LINE`], is broken framing.
fn find_crlf(buf: &[u8]) -> Result<Option<usize>, BadChunk> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(0) => Err(BadChunk),
        Some(i) if buf[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(BadChunk),
        None if buf.len() > MAX_CHUNK_LINE => Err(BadChunk),
        None => Ok(None),
    }
}

/// Appends `data` as one chunk.
pub fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut size = [0u8; 16];
    let mut n = data.len();
    let mut i = size.len();
    while n > 0 || i == size.len() {
        i -= 1;
        size[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
    }
    out.extend_from_slice(&size[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The chunked body's last chunk.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Option<RequestHead>, HeadError> {
        let mut b = BytesMut::from(s);
        parse_request(&mut b, 65536)
    }

    #[test]
    fn a_plain_get_parses_and_leaves_the_rest() {
        let mut b =
            BytesMut::from("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nCookie: a=1\r\n\r\nGET /next");
        let head = parse_request(&mut b, 65536).unwrap().unwrap();
        assert_eq!(head.parts.uri, "/a?b=1");
        assert_eq!(head.parts.headers["host"], "x");
        assert_eq!(head.framing, Framing::Empty);
        assert!(head.keep_alive);
        assert_eq!(&b[..], b"GET /next");
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\nHost: x\n\n",
            "GET / HTTP/1.1\r\nHost: x\n\r\n",
        ] {
            assert!(matches!(req(bad), Err(HeadError::Bad(_))), "{bad:?}");
        }
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_refused() {
        assert!(req("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let mut b =
            BytesMut::from(format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000)).as_str());
        assert_eq!(parse_request(&mut b, 8192).err(), Some(HeadError::TooLarge));
    }

    #[test]
    fn http10_closes_unless_asked() {
        assert!(!req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(
            req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(
            !req("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn response_framing() {
        let parse = |s: &str, m: &Method| {
            let mut b = BytesMut::from(s);
            parse_response(&mut b, 65536, m).map(|h| h.map(|h| (h.framing, h.keep_alive)))
        };
        let get = Method::GET;
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", &get),
            Ok(Some((Framing::Length(5), true)))
        );
        assert_eq!(
            parse(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                &Method::HEAD
            ),
            Ok(Some((Framing::Empty, true)))
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\n\r\n", &get),
            Ok(Some((Framing::Close, false)))
        );
        assert_eq!(
            parse("HTTP/1.1 204 No Content\r\n\r\n", &get),
            Ok(Some((Framing::Empty, true)))
        );
        assert!(parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            &get
        )
        .is_err());
        assert!(parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            &get
        )
        .is_err());
        for te in ["gzip, chunked", "gzip"] {
            let head = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert!(parse(&head, &get).is_err(), "{te}");
        }
    }

    #[test]
    fn chunked_round_trip_in_pieces() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for split in 1..body.len() {
            let mut dec = ChunkedDecoder::default();
            let mut got = Vec::new();
            let mut buf = BytesMut::from(&body[..split]);
            dec.decode(&mut buf, |d| got.extend_from_slice(d)).unwrap();
            buf.extend_from_slice(&body[split..]);
            dec.decode(&mut buf, |d| got.extend_from_slice(d)).unwrap();
            assert!(dec.is_done());
            assert_eq!(got, b"hello world");
            assert_eq!(&buf[..], b"NEXT");
        }
        let mut out = Vec::new();
        put_chunk(&mut out, &[b'a'; 26]);
        assert_eq!(&out[..4], b"1a\r\n");
    }

    #[test]
    fn broken_chunks_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            let mut dec = ChunkedDecoder::default();
            let mut buf = BytesMut::from(bad);
            assert_eq!(dec.decode(&mut buf, |_| {}), Err(BadChunk), "{bad:?}");
        }
    }
}
