//! The seam between the pull logic and the wire: what the client asks of its chroot (the SSH side is `connect`, an in-memory one is in the tests).

/// What can go wrong talking to the chroot, per path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("{path}: no such file on the server")]
    NotFound { path: String },
    #[error("{path}: permission denied by the server")]
    Denied { path: String },
    #[error("{path}: the server sent {got} bytes, the manifest says {expected}")]
    Size {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("{path}: larger than {limit} bytes, refusing to read it")]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: no answer from the server within the i/o timeout")]
    Timeout { path: String },
    #[error("{path}: {message}")]
    Other { path: String, message: String },
}

/// One file to fetch, with the size the manifest promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub path: String,
    pub size: u64,
}

/// The client's view of its chroot. Paths are absolute inside the chroot (`/CURRENT`).
#[allow(async_fn_in_trait)] // used with concrete types on one thread; no Send bound wanted
pub trait Remote {
    /// A small file of unknown size, at most `limit` bytes.
    async fn read(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, RemoteError>;
    /// Several files of known size; implementations may pipeline them. Returns them in order.
    async fn read_files(&mut self, files: &[Wanted]) -> Result<Vec<Vec<u8>>, RemoteError>;
    /// Replaces `path` atomically: a reader sees the old or the new bytes, never a mix.
    async fn write_atomic(&mut self, path: &str, bytes: &[u8]) -> Result<(), RemoteError>;
}
