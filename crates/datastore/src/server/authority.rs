//! Makes the `:authority` of etcdctl's per-endpoint requests acceptable to the HTTP/2 server.
//!
//! etcdctl 3.4 (grpc-go with the passthrough resolver) dials some commands (`endpoint status`,
//! `defrag`, ...) with the whole endpoint URL as target, and sends it as the request authority:
//! `:authority: http://127.0.0.1:2379`. A URL is not an authority, and the `h2` server refuses
//! such a request with `RST_STREAM(PROTOCOL_ERROR)` before the gRPC service sees it. etcd's Go
//! server ignores the authority, and so does this endpoint's router; so this wrapper of the
//! accepted connection rewrites an authority that starts with `http://` or `https://` to a
//! placeholder, in the client's HEADERS frames, before `h2` parses them.
//!
//! The rewrite keeps the HPACK state of both ends in step: the rewritten representation keeps
//! its kind (and so its effect on the dynamic table), and its value is shorter than the
//! original, so the server's table always holds at least every entry the client's does, at the
//! same index. Anything unexpected (a header block split over CONTINUATION frames, a block that
//! does not parse) is passed on unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface of HTTP/2.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Index of `:authority` in the HPACK static table.
const AUTHORITY_INDEX: u64 = 1;
/// What a URL-shaped authority becomes: a valid authority, shorter than any URL.
const PLACEHOLDER: &[u8] = b"rk3s";

/// Huffman codes (RFC 7541, appendix B) of the characters of `http://` and `https://`.
const fn huffman(c: u8) -> (u32, u32) {
    match c {
        b'h' => (0b100111, 6),
        b't' => (0b01001, 5),
        b'p' => (0b101011, 6),
        b's' => (0b01000, 5),
        b':' => (0b1011100, 7),
        b'/' => (0b011000, 6),
        _ => (0, 0),
    }
}

#[derive(Debug)]
enum State {
    /// Checking the connection preface; anything else is passed on untouched.
    Preface,
    /// Reading a frame header.
    FrameHeader,
    /// Passing on this many more bytes of a frame.
    Passthrough(usize),
    /// Collecting a complete HEADERS frame of this payload length.
    Headers(usize),
    /// Not HTTP/2 with prior knowledge: everything passes on untouched.
    Transparent,
}

/// An accepted connection whose request authorities are made acceptable; see the module docs.
#[derive(Debug)]
pub(crate) struct FixAuthority<IO> {
    io: IO,
    state: State,
    /// Bytes read from the client and not yet processed.
    input: Vec<u8>,
    /// Processed bytes not yet handed to the server.
    output: Vec<u8>,
    output_pos: usize,
}

impl<IO> FixAuthority<IO> {
    pub(crate) fn new(io: IO) -> Self {
        FixAuthority {
            io,
            state: State::Preface,
            input: Vec::new(),
            output: Vec::new(),
            output_pos: 0,
        }
    }

    /// Moves what can be decided from `input` to `output`.
    fn process(&mut self, eof: bool) {
        loop {
            match self.state {
                State::Transparent => {
                    self.output.append(&mut self.input);
                    return;
                }
                State::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.state = State::Transparent;
                        continue;
                    }
                    if n < PREFACE.len() {
                        break;
                    }
                    self.output.extend(self.input.drain(..n));
                    self.state = State::FrameHeader;
                }
                State::FrameHeader => {
                    if self.input.len() < FRAME_HEADER {
                        break;
                    }
                    let len = (usize::from(self.input[0]) << 16)
                        | (usize::from(self.input[1]) << 8)
                        | usize::from(self.input[2]);
                    let (kind, flags) = (self.input[3], self.input[4]);
                    if kind == TYPE_HEADERS && flags & FLAG_END_HEADERS != 0 {
                        self.state = State::Headers(len);
                    } else {
                        self.output.extend(self.input.drain(..FRAME_HEADER));
                        self.state = State::Passthrough(len);
                    }
                }
                State::Passthrough(remaining) => {
                    if remaining == 0 {
                        self.state = State::FrameHeader;
                        continue;
                    }
                    if self.input.is_empty() {
                        break;
                    }
                    let n = remaining.min(self.input.len());
                    self.output.extend(self.input.drain(..n));
                    self.state = State::Passthrough(remaining - n);
                }
                State::Headers(len) => {
                    if self.input.len() < FRAME_HEADER + len {
                        break;
                    }
                    let frame: Vec<u8> = self.input.drain(..FRAME_HEADER + len).collect();
                    match rewrite_headers_frame(&frame) {
                        Some(fixed) => self.output.extend(fixed),
                        None => self.output.extend(frame),
                    }
                    self.state = State::FrameHeader;
                }
            }
        }
        if eof {
            // A truncated frame at the end: pass on what there is and let h2 complain.
            self.output.append(&mut self.input);
        }
    }
}

/// The HEADERS frame with a URL-shaped `:authority` replaced, or `None` to keep it as it is.
fn rewrite_headers_frame(frame: &[u8]) -> Option<Vec<u8>> {
    let flags = frame[4];
    let payload = &frame[FRAME_HEADER..];
    let mut start = 0;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        pad = usize::from(*payload.first()?);
        start = 1;
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    let end = payload.len().checked_sub(pad)?;
    let block = payload.get(start..end)?;
    let (value_start, value_end) = find_url_authority(block)?;
    let mut new_block = Vec::with_capacity(block.len());
    new_block.extend_from_slice(&block[..value_start]);
    // A raw (not Huffman-coded) string of 4 bytes: the length fits the 7-bit prefix.
    new_block.push(PLACEHOLDER.len() as u8);
    new_block.extend_from_slice(PLACEHOLDER);
    new_block.extend_from_slice(&block[value_end..]);

    let new_len = start + new_block.len() + pad;
    let mut out = Vec::with_capacity(FRAME_HEADER + new_len);
    out.extend_from_slice(&[(new_len >> 16) as u8, (new_len >> 8) as u8, new_len as u8]);
    out.extend_from_slice(&frame[3..FRAME_HEADER]);
    out.extend_from_slice(&payload[..start]);
    out.extend_from_slice(&new_block);
    out.extend_from_slice(&payload[end..]);
    Some(out)
}

/// Walks an HPACK header block; returns the span of the value string (length prefix
/// included) of a literal `:authority` whose value starts with `http://` or `https://`.
fn find_url_authority(block: &[u8]) -> Option<(usize, usize)> {
    let mut pos = 0;
    while pos < block.len() {
        let b = block[pos];
        if b & 0x80 != 0 {
            // Indexed header field.
            pos = integer(block, pos, 7)?.1;
            continue;
        }
        if b & 0xe0 == 0x20 {
            // Dynamic table size update.
            pos = integer(block, pos, 5)?.1;
            continue;
        }
        // A literal: with incremental indexing (01), without indexing (0000), never indexed
        // (0001).
        let prefix = if b & 0xc0 == 0x40 { 6 } else { 4 };
        let (index, mut next) = integer(block, pos, prefix)?;
        if index == 0 {
            next = string(block, next)?.2;
        }
        let value_start = next;
        let (huffman_coded, value, value_end) = string(block, value_start)?;
        if index == AUTHORITY_INDEX && is_url(huffman_coded, value) {
            return Some((value_start, value_end));
        }
        pos = value_end;
    }
    None
}

/// Decodes an HPACK integer with an `n`-bit prefix at `pos`: the value and the next position.
fn integer(buf: &[u8], pos: usize, n: u32) -> Option<(u64, usize)> {
    let mask = (1u64 << n) - 1;
    let mut value = u64::from(*buf.get(pos)?) & mask;
    let mut pos = pos + 1;
    if value < mask {
        return Some((value, pos));
    }
    let mut shift = 0;
    loop {
        let b = *buf.get(pos)?;
        pos += 1;
        value = value.checked_add(u64::from(b & 0x7f).checked_shl(shift)?)?;
        if b & 0x80 == 0 {
            return Some((value, pos));
        }
        shift += 7;
        if shift > 56 {
            return None;
        }
    }
}

/// An HPACK string at `pos`: whether it is Huffman-coded, its bytes, and the next position.
fn string(buf: &[u8], pos: usize) -> Option<(bool, &[u8], usize)> {
    let huffman_coded = *buf.get(pos)? & 0x80 != 0;
    let (len, start) = integer(buf, pos, 7)?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    Some((huffman_coded, buf.get(start..end)?, end))
}

fn is_url(huffman_coded: bool, value: &[u8]) -> bool {
    let schemes: [&[u8]; 2] = [b"http://", b"https://"];
    if !huffman_coded {
        return schemes.iter().any(|s| value.starts_with(s));
    }
    schemes.iter().any(|s| huffman_starts_with(value, s))
}

/// Whether Huffman-coded `value` starts with the coding of the ASCII `prefix` (made of the
/// characters [`huffman`] knows).
fn huffman_starts_with(value: &[u8], prefix: &[u8]) -> bool {
    let mut bit = 0usize;
    for &c in prefix {
        let (code, len) = huffman(c);
        for i in (0..len).rev() {
            let want = (code >> i) & 1;
            let Some(byte) = value.get(bit / 8) else {
                return false;
            };
            let got = u32::from(byte >> (7 - bit % 8)) & 1;
            if got != want {
                return false;
            }
            bit += 1;
        }
    }
    true
}

impl<IO: AsyncRead + Unpin> AsyncRead for FixAuthority<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.output_pos < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.output_pos);
                buf.put_slice(&this.output[this.output_pos..this.output_pos + n]);
                this.output_pos += n;
                return Poll::Ready(Ok(()));
            }
            this.output.clear();
            this.output_pos = 0;
            if matches!(this.state, State::Transparent) && this.input.is_empty() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            let eof = read.filled().is_empty();
            this.input.extend_from_slice(read.filled());
            this.process(eof);
            if eof && this.output.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FixAuthority<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
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
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for FixAuthority<IO>
{
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let (mut bits, mut n) = (0u64, 0u32);
        let mut out = Vec::new();
        for &c in s {
            let (code, len) = match c {
                b'1' => (0b00001, 5),
                b'.' => (0b010111, 6),
                b'0' => (0b00000, 5),
                _ => huffman(c),
            };
            bits = (bits << len) | u64::from(code);
            n += len;
            while n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        if n > 0 {
            out.push(((bits << (8 - n)) | ((1 << (8 - n)) - 1)) as u8);
        }
        out
    }

    fn headers_frame(block: &[u8]) -> Vec<u8> {
        let len = block.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(block);
        f
    }

    #[test]
    fn huffman_url_authority_is_replaced() {
        let value = huffman_encode(b"http://1.0.0.1:1");
        // `:method: POST` (indexed 3), then `:authority` literal with incremental indexing.
        let mut block = vec![0x83, 0x41, 0x80 | value.len() as u8];
        block.extend_from_slice(&value);
        block.push(0x86); // `:scheme: http`
        let fixed = rewrite_headers_frame(&headers_frame(&block)).expect("rewritten");
        let mut want = vec![0x83, 0x41, 0x04];
        want.extend_from_slice(b"rk3s");
        want.push(0x86);
        assert_eq!(fixed, headers_frame(&want));
    }

    #[test]
    fn raw_url_authority_is_replaced_and_plain_one_kept() {
        let mut block = vec![0x01, 0x07];
        block.extend_from_slice(b"https:/");
        assert!(
            rewrite_headers_frame(&headers_frame(&block)).is_none(),
            "no scheme://"
        );
        let mut block = vec![0x01, 0x0a];
        block.extend_from_slice(b"https://a:");
        assert!(rewrite_headers_frame(&headers_frame(&block)).is_some());
        let mut block = vec![0x41, 0x06];
        block.extend_from_slice(b"a:2379");
        assert!(rewrite_headers_frame(&headers_frame(&block)).is_none());
    }

    #[test]
    fn process_passes_other_frames_through() {
        let mut fix = FixAuthority::new(());
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0, 0, 2, 0x0, 0x1, 0, 0, 0, 1, b'h', b'i']); // DATA
        let mut block = vec![0x41, 0x09];
        block.extend_from_slice(b"http://a:");
        input.extend_from_slice(&headers_frame(&block));
        // Fed in two pieces, cut inside the HEADERS frame.
        let cut = input.len() - 3;
        fix.input.extend_from_slice(&input[..cut]);
        fix.process(false);
        fix.input.extend_from_slice(&input[cut..]);
        fix.process(false);
        let mut want = PREFACE.to_vec();
        want.extend_from_slice(&[0, 0, 2, 0x0, 0x1, 0, 0, 0, 1, b'h', b'i']);
        let mut block = vec![0x41, 0x04];
        block.extend_from_slice(b"rk3s");
        want.extend_from_slice(&headers_frame(&block));
        assert_eq!(fix.output, want);
    }
}
