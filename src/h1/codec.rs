//! HTTP/1.1 message heads and bodies, read and written as bytes.
//!
//! Request heads are parsed strictly: anything two parsers could read two ways
//! (Content-Length beside Transfer-Encoding, a repeated Content-Length, bare LF line
//! ends, an encoding other than `chunked`, a framing header spelled with `_`) is
//! refused rather than normalised, so what the upstream sees is exactly what the
//! proxy saw. Header values are slices of the buffer they arrived in, never copied.
//!
//! This module is the one parser that decides where a message starts and ends
//! (DESIGN.md §9). Its results ([`Framing`], [`RequestHead::keep_alive`], a
//! response's status) are what every later decision reads; nothing looks at the
//! raw bytes again. The framing of every message the proxy writes is computed
//! here from that result ([`write_request`], [`write_response`]): a peer's
//! `Content-Length` and `Transfer-Encoding` lines are never copied.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::{Method, StatusCode, Version};
use smallvec::SmallVec;

use crate::headers::{classify, content_length, put_lines, Extras, Line, Name};

/// Headers a head may carry.
pub(crate) const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with extensions) or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// The most a chunked body's trailer section may take.
const MAX_TRAILERS: usize = 16 * 1024;

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
    /// `CONNECT`: the proxy opens no tunnels: 405.
    Method,
}

/// A parsed request head; its lines borrow the bytes it was parsed from.
pub struct RequestHead<'a> {
    pub method: Method,
    /// The request target as sent.
    pub target: &'a [u8],
    pub(crate) version: Version,
    pub lines: SmallVec<[Line<'a>; 16]>,
    pub(crate) framing: Framing,
    /// The connection may carry another request after this one.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue`.
    pub(crate) expect_continue: bool,
}

/// A parsed response head; its lines borrow the bytes it was parsed from.
pub struct ResponseHead<'a> {
    pub(crate) status: StatusCode,
    pub lines: SmallVec<[Line<'a>; 16]>,
    pub(crate) framing: Framing,
    /// The `Content-Length` the upstream declared, also where it frames no body
    /// (a response to `HEAD`, a `304`): the client is told the same size.
    pub(crate) declared_length: Option<u64>,
    /// The upstream will keep the connection open after this response.
    pub(crate) keep_alive: bool,
    /// Bytes of the head.
    pub(crate) len: usize,
}

/// Where the head at the start of `buf` ends (past its empty line), if it is all
/// here. Does not judge the head: a bare-LF head is found here and refused by
/// [`parse_request`].
pub fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| match buf.get(i + 1) {
        Some(b'\n') => Some(i + 2),
        Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => Some(i + 3),
        _ => None,
    })
}

/// Where the request head at the start of `buf` ends, if it is all here and
/// within `max_bytes`. A head that can never end here (past `max_bytes`, or with
/// a CR followed by anything but LF) is refused now rather than waited for.
pub(crate) fn request_head_end(buf: &[u8], max_bytes: usize) -> Result<Option<usize>, HeadError> {
    match head_end(buf) {
        Some(len) if len > max_bytes => Err(HeadError::TooLarge),
        Some(len) => Ok(Some(len)),
        None if buf.len() >= max_bytes => Err(HeadError::TooLarge),
        None if memchr::memchr_iter(b'\r', buf)
            .any(|i| buf.get(i + 1).is_some_and(|&b| b != b'\n')) =>
        {
            Err(HeadError::Bad("bare CR in request head"))
        }
        None => Ok(None),
    }
}

/// Whether a `Host` value is `uri-host [ ":" port ]` (RFC 9110 §7.2), or empty:
/// letters, digits, `-._~`, sub-delims, `%`, and an IPv6 literal's `[:]`; no
/// `@`, `/`, `?`, `#` or spaces, so it names one host to every reader.
fn is_host(value: &[u8]) -> bool {
    value
        .trim_ascii()
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b))
}

/// Whether the head has a line ending in LF without CR before it.
fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
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
    hosts: usize,
    /// A `Host` value that is no `host[:port]`.
    bad_host: bool,
    /// A framing name spelled with `_` (`Content_Length`): not framing to a
    /// strict parser, framing to one that folds names. Refused in requests.
    underscored: bool,
}

impl FramingHeaders {
    fn see(&mut self, (name, value): Line<'_>) {
        let kind = classify(name);
        if matches!(kind, Name::ContentLength | Name::TransferEncoding) && name.contains(&b'_') {
            self.underscored = true;
            return;
        }
        match kind {
            Name::Host => {
                self.hosts += 1;
                self.bad_host |= !is_host(value);
            }
            Name::ContentLength => {
                self.lengths += 1;
                match content_length(value) {
                    Some(n) => self.length = Some(n),
                    None => self.bad_length = true,
                }
            }
            Name::TransferEncoding => {
                self.encodings += 1;
                self.chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            Name::Connection => {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    self.close |= token.eq_ignore_ascii_case(b"close");
                    self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            Name::Expect => {
                self.expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
    }
}

/// Parses the whole request head `head` (as found by [`head_end`]).
pub fn parse_request(head: &[u8]) -> Result<RequestHead<'_>, HeadError> {
    let mut raw = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, head, &mut raw);
    match parsed {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Bad("malformed request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) if names_a_version(head) => return Err(HeadError::Version),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    }
    if has_bare_lf(head) {
        return Err(HeadError::Bad("bare LF in request head"));
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Bad("malformed request head"));
    };
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Bad("malformed method"))?;
    let version = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if method == Method::CONNECT {
        return Err(HeadError::Method);
    }
    if target == "*" && method != Method::OPTIONS {
        return Err(HeadError::Bad("'*' target outside OPTIONS"));
    }
    // A request target is ASCII (RFC 3986); raw UTF-8 or other bytes above
    // 0x7f are read differently by different servers.
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HeadError::Bad("malformed request target"));
    }
    let mut framing = FramingHeaders::default();
    let lines: SmallVec<[Line<'_>; 16]> = req
        .headers
        .iter()
        .map(|h| {
            let line = (h.name.as_bytes(), h.value);
            framing.see(line);
            line
        })
        .collect();
    if framing.underscored {
        return Err(HeadError::Bad("framing header name spelled with '_'"));
    }
    if framing.bad_length || framing.lengths > 1 {
        return Err(HeadError::Bad("invalid or repeated Content-Length"));
    }
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1; at most one in HTTP/1.0.
    if framing.hosts > 1 || (framing.hosts == 0 && version == Version::HTTP_11) {
        return Err(HeadError::Bad("missing or repeated Host"));
    }
    if framing.bad_host {
        return Err(HeadError::Bad("malformed Host"));
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
        // `Content-Length: 0` stays a length: it is forwarded as one.
        match framing.length {
            None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    let keep_alive = match version {
        Version::HTTP_10 => framing.keep_alive && !framing.close,
        _ => !framing.close,
    };
    Ok(RequestHead {
        method,
        target: target.as_bytes(),
        version,
        lines,
        framing: body,
        keep_alive,
        expect_continue: framing.expect_continue && version == Version::HTTP_11,
    })
}

/// Why an upstream's response head was refused (answered 502).
#[derive(Debug, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Parses the response head at the start of `buf`; `request` is the method it
/// answers (a response to HEAD has no body). `Ok(None)`: not all here yet.
pub fn parse_response<'a>(
    buf: &'a [u8],
    max_bytes: usize,
    request: &Method,
) -> Result<Option<ResponseHead<'a>>, BadResponse> {
    let mut raw = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
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
    if has_bare_lf(&buf[..len]) {
        return Err(BadResponse("bare LF in response head"));
    }
    let (Some(code), Some(version)) = (resp.code, resp.version) else {
        return Err(BadResponse("malformed response head"));
    };
    let status = StatusCode::from_u16(code).map_err(|_| BadResponse("invalid status code"))?;
    let mut framing = FramingHeaders::default();
    let mut first_length: Option<u64> = None;
    let mut lines: SmallVec<[Line<'a>; 16]> = SmallVec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let line = (h.name.as_bytes(), h.value);
        framing.see(line);
        if line.0.eq_ignore_ascii_case(b"content-length") {
            // Identical repeats are one length; differing ones are no length at all.
            match (first_length, framing.length) {
                (Some(a), Some(b)) if a != b => {
                    return Err(BadResponse("conflicting Content-Length"))
                }
                (Some(_), _) => continue,
                _ => first_length = framing.length,
            }
        }
        lines.push(line);
    }
    if framing.bad_length {
        return Err(BadResponse("invalid Content-Length"));
    }
    if status == StatusCode::SWITCHING_PROTOCOLS && version == 0 {
        return Err(BadResponse("101 in HTTP/1.0"));
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
        // the hop-by-hop Transfer-Encoding is dropped; in HTTP/1.0 it is faulty
        // framing (RFC 9112 §6.1).
        if !(framing.chunked && framing.encodings == 1) || version == 0 {
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
        lines,
        framing: body,
        declared_length: if framing.encodings > 0 {
            None
        } else {
            framing.length
        },
        keep_alive,
        len,
    }))
}

/// Writes a request head for the upstream (HTTP/1.1, origin form): the request
/// line, the lines the rules kept, the proxy's own, and the body's framing.
pub fn write_request(
    out: &mut Vec<u8>,
    method: &Method,
    target: &[u8],
    lines: &[Line<'_>],
    keep: &[bool],
    extras: &Extras<'_>,
    framing: Framing,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    put_lines(out, lines, keep, extras);
    put_framing(
        out,
        match framing {
            Framing::Length(n) => BodyHead::Length(n),
            Framing::Chunked => BodyHead::Chunked,
            Framing::Empty | Framing::Close => BodyHead::None,
        },
    );
    out.extend_from_slice(b"\r\n");
}

/// The framing line a message the proxy writes carries: computed from what the
/// parser found, never copied from the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyHead {
    /// No framing line: no body, or a body that ends when the connection does.
    None,
    /// `Content-Length: n` (also on a response to `HEAD`, which has no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

fn put_framing(out: &mut Vec<u8>, body: BodyHead) {
    match body {
        BodyHead::None => {}
        BodyHead::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyHead::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
}

/// How a response body travels to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// As the upstream framed it by length (or no body).
    AsIs,
    /// Re-framed in chunks.
    Chunked,
    /// Raw, delimited by closing the connection (HTTP/1.0 clients, or an upstream
    /// that closes to end its body).
    UntilClose,
}

/// The framing line of a response head written to the client: computed from
/// how the body travels and what the parser found, never copied.
pub(crate) fn client_framing(
    status: StatusCode,
    framing: Framing,
    declared: Option<u64>,
    outgoing: Outgoing,
) -> BodyHead {
    match (outgoing, framing) {
        (Outgoing::Chunked, _) => BodyHead::Chunked,
        (Outgoing::UntilClose, _) => BodyHead::None,
        (Outgoing::AsIs, Framing::Length(n)) => BodyHead::Length(n),
        // 1xx and 204 carry no Content-Length (RFC 9110 §8.6); a response to
        // HEAD or a 304 tells the size the upstream declared, and an empty body
        // declared as one is `Content-Length: 0`.
        (Outgoing::AsIs, _) if status.is_informational() || status == StatusCode::NO_CONTENT => {
            BodyHead::None
        }
        (Outgoing::AsIs, _) => declared.map_or(BodyHead::None, BodyHead::Length),
    }
}

/// Writes a response head for the client with the framing line `body`. `close`
/// adds `Connection: close`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: StatusCode,
    lines: &[Line<'_>],
    keep: &[bool],
    extras: &Extras<'_>,
    body: BodyHead,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    put_lines(out, lines, keep, extras);
    put_framing(out, body);
    if close && status != StatusCode::SWITCHING_PROTOCOLS {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a response the proxy makes itself (an error), with its body.
pub(crate) fn write_own_response(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
    head_only: bool,
    close: bool,
) {
    let lines = crate::headers::lines_of(headers);
    let keep: SmallVec<[bool; 16]> = lines
        .iter()
        .map(|(name, _)| !matches!(classify(name), Name::ContentLength | Name::TransferEncoding))
        .collect();
    let framing = BodyHead::Length(body.len() as u64);
    write_response(
        out,
        status,
        &lines,
        &keep,
        &Extras::default(),
        framing,
        close,
    );
    if !head_only {
        out.extend_from_slice(body);
    }
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
    /// Bytes of trailer lines so far.
    trailers: usize,
}

/// Decodes what `buf` holds of a chunked body into `out`: re-chunked with
/// `rechunk`, raw otherwise.
pub(crate) fn relay_chunks(
    decoder: &mut ChunkedDecoder,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    rechunk: bool,
) -> Result<(), BadChunk> {
    decoder.decode(buf, |data| {
        if rechunk {
            put_chunk(out, data);
        } else {
            out.extend_from_slice(data);
        }
    })
}

/// Moves what `buf` holds of a body with `left` bytes still to come into `out`;
/// whether the body is now whole.
pub(crate) fn take_length(left: &mut u64, buf: &mut BytesMut, out: &mut Vec<u8>) -> bool {
    let n = (*left).min(buf.len() as u64) as usize;
    out.extend_from_slice(&buf[..n]);
    buf.advance(n);
    *left -= n as u64;
    *left == 0
}

/// The chunked framing is broken.
#[derive(Debug, PartialEq, Eq)]
pub struct BadChunk;

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: Chunk::Size,
            trailers: 0,
        }
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
                    let size = chunk_size(&buf[..end])?;
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
                    if end == 0 {
                        buf.advance(2);
                        self.state = Chunk::Done;
                        continue;
                    }
                    // Trailers are dropped, but only well-formed ones: a line that
                    // is no `name: value` is broken framing, not data.
                    let line = &buf[..end];
                    let colon = line.iter().position(|&b| b == b':').ok_or(BadChunk)?;
                    if colon == 0 || !line[..colon].iter().all(|&b| is_token(b)) {
                        return Err(BadChunk);
                    }
                    self.trailers += end + 2;
                    if self.trailers > MAX_TRAILERS {
                        return Err(BadChunk);
                    }
                    buf.advance(end + 2);
                }
            }
        }
    }
}

/// The index of the first CRLF in `buf`. A bare LF or a bare CR, a control
/// byte, or a line longer than [`MAX_CHUNK_LINE`] (finished or not) is broken
/// framing.
fn find_crlf(buf: &[u8]) -> Result<Option<usize>, BadChunk> {
    let window = &buf[..buf.len().min(MAX_CHUNK_LINE + 2)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        if buf.len() > MAX_CHUNK_LINE {
            return Err(BadChunk);
        }
        // What is here so far must still be able to become a line.
        return match window.iter().position(|&b| b == b'\r' || !is_line_byte(b)) {
            Some(i) if window[i] == b'\r' && i + 1 == window.len() => Ok(None),
            Some(_) => Err(BadChunk),
            None => Ok(None),
        };
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(BadChunk);
    }
    let end = lf - 1;
    if end > MAX_CHUNK_LINE || !window[..end].iter().all(|&b| is_line_byte(b)) {
        return Err(BadChunk);
    }
    Ok(Some(end))
}

/// Bytes a chunk-size or trailer line may hold: visible ASCII, space, tab and
/// obs-text; no CR, LF, NUL or other control.
fn is_line_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

use crate::headers::is_tchar as is_token;

/// The size on a chunk-size line: 1 to 15 hex digits, then nothing or a chunk
/// extension (`;`, optionally after spaces or tabs). Anything else (a sign, a
/// `0x`, spaces inside or after the digits with no extension) is refused.
fn chunk_size(line: &[u8]) -> Result<u64, BadChunk> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(BadChunk);
    }
    if !chunk_extensions(&line[digits..]) {
        return Err(BadChunk);
    }
    Ok(line[..digits].iter().fold(0u64, |n, &d| {
        n * 16 + (d as char).to_digit(16).unwrap_or(0) as u64
    }))
}

/// Whether `ext` is `*( BWS ";" BWS name [ BWS "=" BWS value ] )` (RFC 9112
/// §7.1.1): names are tokens, values tokens or quoted strings. An empty name or
/// an unbalanced quote is refused, not skipped.
fn chunk_extensions(mut ext: &[u8]) -> bool {
    let bws = |s: &[u8]| -> usize { s.iter().take_while(|&&b| b == b' ' || b == b'\t').count() };
    let token = |s: &[u8]| -> usize { s.iter().take_while(|&&b| is_token(b)).count() };
    loop {
        // Spaces only before a `;`, never trailing.
        let ws = bws(ext);
        if ws == ext.len() {
            return ws == 0;
        }
        ext = &ext[ws..];
        let Some((&b';', rest)) = ext.split_first() else {
            return false;
        };
        ext = &rest[bws(rest)..];
        let name = token(ext);
        if name == 0 {
            return false;
        }
        ext = &ext[name..];
        let after = &ext[bws(ext)..];
        let Some((&b'=', rest)) = after.split_first() else {
            continue;
        };
        ext = &rest[bws(rest)..];
        if ext.first() == Some(&b'"') {
            let mut i = 1;
            loop {
                match ext.get(i) {
                    None => return false,
                    Some(b'"') => break,
                    Some(b'\\') if ext.get(i + 1).is_some() => i += 2,
                    Some(&b)
                        if b == b'\t'
                            || b == b' '
                            || b == 0x21
                            || (0x23..=0x7e).contains(&b)
                            || b >= 0x80 =>
                    {
                        i += 1
                    }
                    Some(_) => return false,
                }
            }
            ext = &ext[i + 1..];
        } else {
            let value = token(ext);
            if value == 0 {
                return false;
            }
            ext = &ext[value..];
        }
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

    /// Parses `s` as a request head, as the connection loop does: find its end,
    /// then parse exactly that.
    fn req(s: &str) -> Result<Option<(Framing, bool)>, HeadError> {
        let Some(end) = head_end(s.as_bytes()) else {
            return Ok(None);
        };
        parse_request(&s.as_bytes()[..end]).map(|h| Some((h.framing, h.keep_alive)))
    }

    #[test]
    fn a_plain_get_parses_and_its_end_is_found() {
        let s = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nCookie: a=1\r\n\r\nGET /next";
        let end = head_end(s.as_bytes()).unwrap();
        assert_eq!(&s[end..], "GET /next");
        let head = parse_request(&s.as_bytes()[..end]).unwrap();
        assert_eq!(head.target, b"/a?b=1");
        assert_eq!(head.lines[0], (&b"Host"[..], &b"x"[..]));
        assert_eq!(head.framing, Framing::Empty);
        assert!(head.keep_alive);
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
    fn host_connect_and_underscored_framing_are_refused() {
        for bad in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent_Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(req(bad), Err(HeadError::Bad(_))), "{bad:?}");
        }
        assert_eq!(
            req("CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n"),
            Err(HeadError::Method)
        );
        assert!(req("GET / HTTP/1.0\r\n\r\n").is_ok());
        assert!(req("GET / HTTP/1.1\r\nHost:\r\n\r\n").is_ok());
        assert!(req("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").is_ok());
    }

    #[test]
    fn framing_is_written_from_the_parse_never_copied() {
        let head = b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\n";
        let parsed = parse_request(head).unwrap();
        assert_eq!(parsed.framing, Framing::Length(3));
        let names = crate::headers::classify_all(&parsed.lines);
        let keep = crate::headers::hop_filter(&parsed.lines, &names, "x-session-", false);
        let mut out = Vec::new();
        write_request(
            &mut out,
            &parsed.method,
            parsed.target,
            &parsed.lines,
            &keep,
            &Extras::default(),
            parsed.framing,
        );
        assert_eq!(
            out,
            b"POST /a HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\n\r\n"
        );
    }

    #[test]
    fn partial_heads_have_no_end_yet() {
        assert_eq!(req("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(
            req("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n"),
            Ok(Some((Framing::Length(7), true)))
        );
    }

    #[test]
    fn heads_that_can_never_end_are_refused_at_once() {
        assert_eq!(
            request_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 64),
            Ok(None)
        );
        assert_eq!(
            request_head_end(b"GET / HTTP/1.1\rHost: x\r", 64),
            Err(HeadError::Bad("bare CR in request head"))
        );
        assert_eq!(
            request_head_end(b"GET / HTTP/1.1\r\nX: aaaaaaaaaaaa", 16),
            Err(HeadError::TooLarge)
        );
        assert_eq!(
            request_head_end(b"GET / HTTP/1.1\r\nX: aaaaaaaaaaaa\r\n\r\n", 16),
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    fn http10_closes_unless_asked() {
        let keep_alive = |s: &str| req(s).unwrap().unwrap().1;
        assert!(!keep_alive("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep_alive(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!keep_alive(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ));
    }

    #[test]
    fn response_framing() {
        let parse = |s: &str, m: &Method| {
            parse_response(s.as_bytes(), 65536, m).map(|h| h.map(|h| (h.framing, h.keep_alive)))
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
        let body =
            b"5;ext=1\r\nhello\r\n6 ;e ; f = \"g\\\"h\"\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
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
        let long_line = [&b"5;"[..], &[b'a'; MAX_CHUNK_LINE][..], b"\r\n"].concat();
        let long_partial = [&b"5;"[..], &[b'a'; MAX_CHUNK_LINE][..]].concat();
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"fffffffffffffffff\r\n",
            b"0x5\r\n",
            b"-1\r\n",
            b"+5\r\n",
            b"5 5\r\n",
            b"5 \r\n",
            b"5\rX\r\n",
            b"5;a\rb\r\n",
            b"5;\x00\r\n",
            b"0\r\nnot a trailer\r\n\r\n",
            b"0\r\nX: 1\n\r\n",
            b"2;\r\n",
            b"2; \r\n",
            b"2;a=\r\n",
            b"2;a=\"b\r\n",
            b"2;a=\"b\";c=\"d; e\r\n",
            b"2 ;\r\n",
            &long_line,
            &long_partial,
        ] {
            let mut dec = ChunkedDecoder::default();
            let mut buf = BytesMut::from(bad);
            assert_eq!(dec.decode(&mut buf, |_| {}), Err(BadChunk), "{bad:?}");
        }
    }
}
