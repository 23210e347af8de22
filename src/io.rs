//! Writing to a peer that may stop reading: every write is bounded by how long it
//! may make no progress, and a close is bounded too.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes all of `bytes` and flushes (TLS streams buffer). A write that makes no
/// progress for `stall` fails with `TimedOut`: a peer that stops reading never
/// holds the connection for good. A write the socket takes at once arms no
/// timer.
pub(crate) async fn send<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut bytes: &[u8],
    stall: Duration,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = within(stall, |cx| Pin::new(&mut *io).poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    within(stall, |cx| Pin::new(&mut *io).poll_flush(cx)).await
}

/// Polls `op` until it is ready, failing with `TimedOut` when it stays pending
/// for `limit`. The timer is made only once `op` has to wait.
async fn within<T>(
    limit: Duration,
    mut op: impl FnMut(&mut Context<'_>) -> Poll<std::io::Result<T>>,
) -> std::io::Result<T> {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = op(cx) {
            return Poll::Ready(done);
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Ends a connection with a FIN (and, over TLS, `close_notify`), bounded in time.
pub(crate) async fn close<W: AsyncWrite + Unpin>(io: &mut W) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}
