//! An in-memory chroot behind the transport seam, for the pull tests (built only with them).

use std::collections::BTreeMap;

use super::transport::{Remote, RemoteError, StreamError, Wanted};

const STREAM_CHUNK: usize = 4096;

/// One request a transport made, as tests count them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Read(String),
    Write(String),
}

/// An in-memory chroot: tests plant files, count requests and inject faults.
#[derive(Debug, Default)]
pub struct MemRemote {
    pub files: BTreeMap<String, Vec<u8>>,
    pub log: Vec<Op>,
    /// Fail every read after this many file reads (a cut link).
    pub fail_after_reads: Option<usize>,
    /// Writes are refused (a full or read-only reports/).
    pub deny_writes: bool,
}

impl MemRemote {
    pub fn new() -> MemRemote {
        MemRemote::default()
    }
    pub fn put(&mut self, path: &str, bytes: impl Into<Vec<u8>>) {
        self.files.insert(path.to_owned(), bytes.into());
    }
    pub fn reads(&self) -> usize {
        self.log.iter().filter(|o| matches!(o, Op::Read(_))).count()
    }
    /// The promised size against what the chroot holds: like the wire, fewer or more is an error.
    fn sized(&mut self, w: &Wanted) -> Result<Vec<u8>, RemoteError> {
        let bytes = self.get(&w.path)?;
        if bytes.len() as u64 != w.size {
            return Err(RemoteError::Size {
                path: w.path.clone(),
                expected: w.size,
                got: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    fn get(&mut self, path: &str) -> Result<Vec<u8>, RemoteError> {
        if self
            .fail_after_reads
            .is_some_and(|limit| self.reads() >= limit)
        {
            return Err(RemoteError::Lost {
                server: "mem".into(),
                path: path.to_owned(),
            });
        }
        self.log.push(Op::Read(path.to_owned()));
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| RemoteError::NotFound {
                path: path.to_owned(),
            })
    }
}

impl Remote for MemRemote {
    async fn read(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, RemoteError> {
        let bytes = self.get(path)?;
        if bytes.len() as u64 > limit {
            return Err(RemoteError::TooLarge {
                path: path.to_owned(),
                limit,
            });
        }
        Ok(bytes)
    }

    async fn read_files(&mut self, files: &[Wanted]) -> Result<Vec<Vec<u8>>, RemoteError> {
        files.iter().map(|w| self.sized(w)).collect()
    }

    async fn read_into(
        &mut self,
        file: &Wanted,
        out: &mut dyn std::io::Write,
    ) -> Result<(), StreamError> {
        let bytes = self.sized(file)?;
        // Small chunks, so the tests cross chunk boundaries as the wire does.
        for chunk in bytes.chunks(STREAM_CHUNK) {
            out.write_all(chunk).map_err(StreamError::Local)?;
        }
        Ok(())
    }

    async fn write_atomic(&mut self, path: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        self.log.push(Op::Write(path.to_owned()));
        if self.deny_writes {
            return Err(RemoteError::Denied {
                path: path.to_owned(),
            });
        }
        self.files.insert(path.to_owned(), bytes.to_vec());
        Ok(())
    }
}

/// Fresh sessions (the ones that confirm an activation) to a copy of the chroot. A test's
/// poll holds the fixture's chroot by `&mut` as its kept session, so the copy is taken before
/// the poll and what the fresh sessions wrote is merged back after it.
#[derive(Debug, Default)]
pub struct Fresh {
    chroot: std::rc::Rc<std::cell::RefCell<MemRemote>>,
    /// Connection attempts that fail before one works (`usize::MAX`: never reached).
    pub failing: usize,
    pub attempts: usize,
    pub sessions: usize,
}

impl Fresh {
    pub fn of(chroot: &MemRemote, failing: usize) -> Fresh {
        let copy = MemRemote {
            files: chroot.files.clone(),
            ..MemRemote::default()
        };
        Fresh {
            chroot: std::rc::Rc::new(std::cell::RefCell::new(copy)),
            failing,
            attempts: 0,
            sessions: 0,
        }
    }

    /// Writes the fresh sessions made into `chroot`; returns what they did.
    pub fn merge_into(&self, chroot: &mut MemRemote) -> Vec<Op> {
        let copy = self.chroot.borrow();
        for op in &copy.log {
            if let Op::Write(path) = op {
                chroot.files.insert(path.clone(), copy.files[path].clone());
            }
        }
        copy.log.clone()
    }
}

impl super::transport::Connector for Fresh {
    type Session = FreshSession;
    async fn connect(&mut self) -> Result<FreshSession, super::PullError> {
        self.attempts += 1;
        if self.failing > 0 {
            self.failing = self.failing.saturating_sub(1);
            return Err(super::PullError::Remote(RemoteError::Lost {
                server: "mem".into(),
                path: "(connect)".into(),
            }));
        }
        self.sessions += 1;
        Ok(FreshSession(self.chroot.clone()))
    }
    async fn close(&mut self, _: FreshSession) {}
}

/// One fresh session to the copy of the chroot.
pub struct FreshSession(std::rc::Rc<std::cell::RefCell<MemRemote>>);

impl FreshSession {
    /// Runs `op` on the chroot without holding its borrow across an await.
    async fn with<T>(&self, op: impl AsyncFnOnce(&mut MemRemote) -> T) -> T {
        let mut chroot = std::mem::take(&mut *self.0.borrow_mut());
        let out = op(&mut chroot).await;
        *self.0.borrow_mut() = chroot;
        out
    }
}

impl Remote for FreshSession {
    async fn read(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, RemoteError> {
        self.with(async |c| c.read(path, limit).await).await
    }
    async fn read_files(&mut self, files: &[Wanted]) -> Result<Vec<Vec<u8>>, RemoteError> {
        self.with(async |c| c.read_files(files).await).await
    }
    async fn read_into(
        &mut self,
        file: &Wanted,
        out: &mut dyn std::io::Write,
    ) -> Result<(), StreamError> {
        self.with(async |c| c.read_into(file, out).await).await
    }
    async fn write_atomic(&mut self, path: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        self.with(async |c| c.write_atomic(path, bytes).await).await
    }
}
