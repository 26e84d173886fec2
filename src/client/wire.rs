//! What the SFTP session really sends and receives: a stream wrapper that counts outgoing SFTP packets and bytes in both directions.
//!
//! The counts come from the bytes handed to the channel, not from the code that makes
//! requests, so a test asserting "a no-change poll is 8 requests" measures the wire.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Totals of one SFTP session, shared with the tasks russh-sftp runs the stream on.
#[derive(Debug, Default)]
pub struct WireCounts {
    packets_out: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
}

impl WireCounts {
    /// Complete SFTP packets the client wrote (each request is one packet).
    pub fn packets_out(&self) -> u64 {
        self.packets_out.load(Ordering::Relaxed)
    }
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }
}

/// Follows SFTP framing (u32 big-endian length, then that many bytes) across writes of any size.
#[derive(Debug, Default)]
struct Framer {
    header: [u8; 4],
    /// Bytes of `header` seen so far; 4 while inside a packet's body.
    have: usize,
    /// Body bytes still to come of the current packet.
    body_left: u64,
}

impl Framer {
    /// Consumes `bytes`, returning how many packets they completed.
    fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut complete = 0;
        while !bytes.is_empty() {
            if self.have < 4 {
                let take = (4 - self.have).min(bytes.len());
                self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                self.have += take;
                bytes = &bytes[take..];
                if self.have < 4 {
                    break;
                }
                self.body_left = u32::from_be_bytes(self.header).into();
            } else {
                let take = self.body_left.min(bytes.len() as u64);
                self.body_left -= take;
                bytes = &bytes[take as usize..];
            }
            if self.have == 4 && self.body_left == 0 {
                complete += 1;
                self.have = 0;
            }
        }
        complete
    }
}

/// A stream that counts what passes through it into [`WireCounts`].
pub struct Counted<S> {
    inner: S,
    framer: Framer,
    counts: Arc<WireCounts>,
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> (Counted<S>, Arc<WireCounts>) {
        let counts = Arc::new(WireCounts::default());
        let stream = Counted {
            inner,
            framer: Framer::default(),
            counts: counts.clone(),
        };
        (stream, counts)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = (buf.filled().len() - before) as u64;
        self.counts.bytes_in.fetch_add(read, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        // Only what the channel accepted: a short write's rest comes again in the next call.
        let packets = self.framer.feed(&buf[..written]);
        self.counts
            .packets_out
            .fetch_add(packets, Ordering::Relaxed);
        self.counts
            .bytes_out
            .fetch_add(written as u64, Ordering::Relaxed);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn packet(body: &[u8]) -> Vec<u8> {
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(body);
        p
    }

    /// Accepts at most `max` bytes per write, like a channel with a small window.
    struct Trickle {
        max: usize,
        got: Vec<u8>,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn split_writes_count_a_packet_once_it_is_complete() {
        let p = packet(b"\x03open /CURRENT");
        let mut f = Framer::default();
        // Split inside the length, then inside the body.
        assert_eq!(f.feed(&p[..2]), 0);
        assert_eq!(f.feed(&p[2..7]), 0);
        assert_eq!(f.feed(&p[7..p.len() - 1]), 0);
        assert_eq!(f.feed(&p[p.len() - 1..]), 1);
        // One byte at a time.
        let mut f = Framer::default();
        let n: u64 = p.iter().map(|b| f.feed(std::slice::from_ref(b))).sum();
        assert_eq!(n, 1);
    }

    #[test]
    fn joined_writes_count_every_packet() {
        let mut joined = packet(b"\x01init");
        joined.extend(packet(b""));
        joined.extend(packet(&[7u8; 40_000]));
        let tail = packet(b"\x04close");
        joined.extend_from_slice(&tail[..3]);
        let mut f = Framer::default();
        assert_eq!(
            f.feed(&joined),
            3,
            "the unfinished fourth is not counted yet"
        );
        assert_eq!(f.feed(&tail[3..]), 1);
    }

    #[test]
    fn the_stream_counts_what_the_channel_accepted() {
        let mut bytes = Vec::new();
        for body in [&b"\x01a"[..], b"\x03bcd", &[9u8; 1000]] {
            bytes.extend(packet(body));
        }
        let (mut stream, counts) = Counted::new(Trickle {
            max: 5,
            got: Vec::new(),
        });
        block_on(stream.write_all(&bytes)).unwrap();
        assert_eq!(stream.inner.got, bytes);
        assert_eq!(counts.packets_out(), 3);
        assert_eq!(counts.bytes_out(), bytes.len() as u64);

        let (mut reader, counts) = Counted::new(&b"\x00\x00\x00\x01\x02"[..]);
        let mut got = Vec::new();
        block_on(reader.read_to_end(&mut got)).unwrap();
        assert_eq!(counts.bytes_in(), 5);
        assert_eq!(counts.packets_out(), 0);
    }
}
