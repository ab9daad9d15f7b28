//! A lean HTTP/1.1 client connection for the ingest load generator (`ingest --http-client
//! lean`, the default).
//!
//! The bench shares the machine's two cores with ingest and nats-server, so whatever the load
//! generator spends per request is taken from what it measures. hyper's client runs each
//! connection as a task of its own and hands every request and answer across a channel to it:
//! two task wake-ups per request on top of the socket's. This one writes the request from the
//! sender's own task in one `write` and reads the answer there, parsed by `httparse` (hyper's
//! own parser). It speaks only what the bench needs: one request at a time on a keep-alive
//! connection, answers framed by `Content-Length`. Anything else (a chunked answer, a closed
//! connection, a malformed status line) is an error that says so, and the caller opens a new
//! connection.

use std::io::{self, Write as _};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most an answer's head (status line and headers) may take.
const MAX_HEAD: usize = 16 * 1024;
/// The most headers an answer may have.
const MAX_HEADERS: usize = 32;
/// The longest answer body read.
const MAX_BODY: usize = 1024 * 1024;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("the connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the server closed the connection before answering in full")]
    Closed,
    #[error("the answer is not HTTP/1.1: {0}")]
    Malformed(String),
    #[error("the answer's head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the answer is {0}, which this client does not read (it reads Content-Length bodies)")]
    Unsupported(String),
}

/// One keep-alive HTTP/1.1 connection, one request at a time.
#[derive(Debug)]
pub struct Http1Connection {
    stream: TcpStream,
    host: String,
    /// The request being written, reused.
    out: Vec<u8>,
    /// What has been read and not yet consumed.
    read: BytesMut,
}

impl Http1Connection {
    /// Connects to `addr` (`HOST:PORT`), which is also the `Host` header sent.
    pub async fn open(addr: &str) -> Result<Self, Http1Error> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| Http1Error::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        stream.set_nodelay(true)?;
        Ok(Http1Connection {
            stream,
            host: addr.to_owned(),
            out: Vec::with_capacity(4096),
            read: BytesMut::with_capacity(4096),
        })
    }

    /// POSTs `body` to `path` with `headers` (besides `Host` and `Content-Length`); the
    /// answer's status and body. After an error the connection is in an unknown state: drop it.
    pub async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, Bytes), Http1Error> {
        self.out.clear();
        self.out.extend_from_slice(b"POST ");
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        self.out.extend_from_slice(self.host.as_bytes());
        for (name, value) in headers {
            self.out.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(name.as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value.as_bytes());
        }
        write!(self.out, "\r\ncontent-length: {}\r\n\r\n", body.len())?;
        self.out.extend_from_slice(body);
        self.stream.write_all(&self.out).await?;
        self.answer().await
    }

    /// Reads one answer.
    async fn answer(&mut self) -> Result<(u16, Bytes), Http1Error> {
        let (status, head_len, body_len) = loop {
            if let Some(head) = parse_head(&self.read)? {
                break head;
            }
            if self.read.len() >= MAX_HEAD {
                return Err(Http1Error::HeadTooLarge);
            }
            self.fill().await?;
        };
        while self.read.len() < head_len + body_len {
            self.fill().await?;
        }
        self.read.advance(head_len);
        let body = self.read.split_to(body_len).freeze();
        Ok((status, body))
    }

    /// Reads what the socket has; an error if it closed.
    async fn fill(&mut self) -> Result<(), Http1Error> {
        self.read.reserve(4096);
        if self.stream.read_buf(&mut self.read).await? == 0 {
            return Err(Http1Error::Closed);
        }
        Ok(())
    }
}

/// The status, head length and body length of the answer at the start of `buf`, once its head
/// is complete.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, usize, usize)>, Http1Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Http1Error::Malformed(e.to_string())),
    };
    let status = response
        .code
        .ok_or_else(|| Http1Error::Malformed("no status".into()))?;
    if response.version != Some(1) {
        return Err(Http1Error::Malformed(format!(
            "HTTP/1.{} answer",
            response.version.unwrap_or(0)
        )));
    }
    let mut body_len = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Http1Error::Unsupported(format!(
                "Transfer-Encoding: {}",
                String::from_utf8_lossy(header.value)
            )));
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    Http1Error::Malformed(format!(
                        "Content-Length: {}",
                        String::from_utf8_lossy(header.value)
                    ))
                })?;
            body_len = Some(len);
        }
    }
    let body_len = match body_len {
        Some(len) if len > MAX_BODY => {
            return Err(Http1Error::Unsupported(format!(
                "a body of {len} bytes (at most {MAX_BODY})"
            )));
        }
        Some(len) => len,
        // 1xx, 204 and 304 answers have no body; any other without a length runs to the close.
        None if status < 200 || status == 204 || status == 304 => 0,
        None => {
            return Err(Http1Error::Unsupported(
                "an answer without Content-Length".into(),
            ));
        }
    };
    Ok(Some((status, head_len, body_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_once_complete() {
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(parse_head(&answer[..20]).unwrap().is_none());
        assert_eq!(
            parse_head(answer).unwrap(),
            Some((200, answer.len() - 2, 2))
        );
    }

    #[test]
    fn answers_it_cannot_frame_are_errors() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse_head(chunked),
            Err(Http1Error::Unsupported(m)) if m.contains("chunked")
        ));
        let no_length = b"HTTP/1.1 200 OK\r\n\r\n";
        assert!(matches!(
            parse_head(no_length),
            Err(Http1Error::Unsupported(_))
        ));
        assert!(matches!(
            parse_head(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(Http1Error::Malformed(_))
        ));
        let bad_length = b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n";
        assert!(matches!(
            parse_head(bad_length),
            Err(Http1Error::Malformed(_))
        ));
        assert_eq!(
            parse_head(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap(),
            Some((204, 27, 0))
        );
    }
}
