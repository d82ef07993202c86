//! The `.part`'s writer thread of a download, so that receiving, decompressing
//! and hashing (the download's thread) overlap with writing (this one).
//!
//! The download fills 1 MiB buffers ([`Sink::put`], or [`Sink::space`] then
//! [`Sink::commit`] to receive straight into one) and the writer writes each at
//! its place in the `.part`; at most [`BUFS`] are in flight, so a slow disk
//! slows the download instead of growing memory. Every 8 MiB the writer starts
//! the kernel's writeback of what it wrote (`sync_file_range`, not waiting), so
//! a checkpoint's and the final fsync find little left to write.
//!
//! The writer also keeps the sha256 of the bytes it is given, in order (the
//! image's digest): hashing then overlaps with receiving and decompressing
//! instead of adding a pass on the download's thread. Bytes are given in
//! order from where the writer started, so the hash the writer hands back in
//! [`Sink::finish`] covers everything the caller's hash had plus them.
//!
//! Runs of zeros are not written: the writer only ever writes past the end of
//! the `.part` (a fresh download starts at 0, a resumed one is cut to its
//! durable bytes first), where the file reads as zeros already, so a 64 KiB
//! span of zeros (aligned in the file) is left as a hole and the file is
//! extended over it. A disk image is mostly empty space: its zeros then cost
//! neither the page cache's copy nor the disk's writes, and the staged image
//! is sparse.
//!
//! Checkpoints keep the crash guarantee of [`super::state`]: [`Sink::checkpoint`]
//! sends the record after every byte it claims; the writer fsyncs the `.part`
//! once those bytes are written and only then hands the record back
//! ([`Sink::synced`]) to be written to disk.

use super::state::ResumeState;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};
use std::thread::JoinHandle;

/// The size of one buffer.
pub const BUF: usize = 1 << 20;
/// Buffers in flight at most (filled, queued or being written).
pub const BUFS: usize = 8;
/// The writer starts the writeback after this many bytes written.
const KICK: u64 = 8 << 20;
/// Zeros are left as holes in spans of this size, aligned in the file.
pub const HOLE: usize = 64 * 1024;
static ZEROS: [u8; HOLE] = [0; HOLE];

enum Job {
    Write { at: u64, buf: Vec<u8> },
    Sync(ResumeState),
}

enum Done {
    Buf(Vec<u8>),
    Synced(ResumeState),
    Failed(io::Error),
}

/// The download's side: buffers to fill and the writer's answers.
pub struct Sink {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<Sha256>>,
    pool: Vec<Vec<u8>>,
    /// Buffers allocated so far (at most BUFS).
    made: usize,
    /// The buffer being filled (`len() == BUF`) and how far.
    cur: Option<Vec<u8>>,
    fill: usize,
    /// Where `cur` starts in the `.part`.
    at: u64,
    /// Records whose bytes are durable, oldest first, not yet taken.
    synced: Vec<ResumeState>,
    /// The writer failed: every later call returns this error.
    failed: Option<io::Error>,
}

fn gone() -> io::Error {
    io::Error::other("the .part's writer thread ended")
}

impl Sink {
    /// Starts the writer on a clone of `file`; the next byte goes at `at`,
    /// and `hash` (of the bytes before `at`) is continued with every byte given.
    pub fn start(file: &File, at: u64, hash: Sha256) -> io::Result<Sink> {
        let file = file.try_clone()?;
        let (jobs, rx) = sync_channel(BUFS + 1);
        let (tx, done) = channel();
        let thread = std::thread::Builder::new()
            .name("part-writer".into())
            .spawn(move || run(file, rx, tx, at, hash))?;
        Ok(Sink {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            pool: Vec::new(),
            made: 0,
            cur: None,
            fill: 0,
            at,
            synced: Vec::new(),
            failed: None,
        })
    }

    fn take(&mut self, d: Done) {
        match d {
            Done::Buf(mut b) => {
                // A buffer sent part-filled came back shorter.
                b.resize(BUF, 0);
                self.pool.push(b)
            }
            Done::Synced(r) => self.synced.push(r),
            Done::Failed(e) => {
                self.failed.get_or_insert(e);
            }
        }
    }

    fn check(&mut self) -> io::Result<()> {
        match &self.failed {
            Some(e) => Err(io::Error::new(e.kind(), e.to_string())),
            None => Ok(()),
        }
    }

    /// Takes the writer's answers that are there, without waiting.
    fn poll(&mut self) -> io::Result<()> {
        loop {
            match self.done.try_recv() {
                Ok(d) => self.take(d),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.failed.get_or_insert_with(gone);
                    break;
                }
            }
        }
        self.check()
    }

    /// The unfilled rest of the current buffer (never empty).
    pub fn space(&mut self) -> io::Result<&mut [u8]> {
        if self.cur.is_none() {
            self.poll()?;
            let buf = match self.pool.pop() {
                Some(b) => b,
                None if self.made < BUFS => {
                    self.made += 1;
                    vec![0u8; BUF]
                }
                None => loop {
                    match self.done.recv() {
                        Ok(Done::Buf(mut b)) => {
                            b.resize(BUF, 0);
                            break b;
                        }
                        Ok(d) => {
                            self.take(d);
                            self.check()?;
                        }
                        Err(_) => return Err(gone()),
                    }
                },
            };
            self.cur = Some(buf);
            self.fill = 0;
        }
        let fill = self.fill;
        match &mut self.cur {
            Some(b) => Ok(&mut b[fill..]),
            None => Err(gone()),
        }
    }

    /// The last `n` bytes given by [`Sink::space`] before they are committed.
    pub fn filled(&self, n: usize) -> &[u8] {
        match &self.cur {
            Some(b) => &b[self.fill..self.fill + n],
            None => &[],
        }
    }

    /// `n` more bytes of the space were filled.
    pub fn commit(&mut self, n: usize) -> io::Result<()> {
        self.fill += n;
        if self.fill == BUF {
            self.send()?;
        }
        Ok(())
    }

    /// Copies `data` into buffers.
    pub fn put(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let space = self.space()?;
            let n = space.len().min(data.len());
            space[..n].copy_from_slice(&data[..n]);
            data = &data[n..];
            self.commit(n)?;
        }
        Ok(())
    }

    /// Hands the current buffer, as far as filled, to the writer.
    fn send(&mut self) -> io::Result<()> {
        let Some(mut buf) = self.cur.take() else { return Ok(()) };
        let n = self.fill;
        self.fill = 0;
        if n == 0 {
            self.pool.push(buf);
            return Ok(());
        }
        buf.truncate(n);
        let at = self.at;
        self.at += n as u64;
        self.job(Job::Write { at, buf })
    }

    fn job(&mut self, job: Job) -> io::Result<()> {
        self.check()?;
        let sent = self.jobs.as_ref().map(|j| j.send(job).is_ok()).unwrap_or(false);
        if !sent {
            // The writer stopped: its error is in the answers.
            while let Ok(d) = self.done.recv() {
                self.take(d);
            }
            self.failed.get_or_insert_with(gone);
            return self.check();
        }
        Ok(())
    }

    /// `record` is written once every byte given so far is durable (see [`Sink::synced`]).
    pub fn checkpoint(&mut self, record: ResumeState) -> io::Result<()> {
        self.send()?;
        self.job(Job::Sync(record))
    }

    /// The records whose bytes are now durable, oldest first.
    pub fn synced(&mut self) -> io::Result<Vec<ResumeState>> {
        self.poll()?;
        Ok(std::mem::take(&mut self.synced))
    }

    /// Writes what is left, stops the writer; the records made durable since
    /// the last [`Sink::synced`] are returned, with the hash continued over
    /// every byte given. The `.part` is not fsynced here.
    pub fn finish(mut self) -> io::Result<(Vec<ResumeState>, Sha256)> {
        let sent = self.send();
        self.jobs = None;
        while let Ok(d) = self.done.recv() {
            self.take(d);
        }
        let hash = match self.thread.take().map(|t| t.join()) {
            Some(Ok(h)) => Some(h),
            _ => None,
        };
        sent?;
        self.check()?;
        let Some(hash) = hash else { return Err(gone()) };
        Ok((std::mem::take(&mut self.synced), hash))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // An attempt that ended early: the writer finishes its queue and stops.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread: hashes, writes, starts the writeback, fsyncs for
/// checkpoints; returns the hash when the download's side hangs up.
fn run(file: File, jobs: Receiver<Job>, done: Sender<Done>, start: u64, mut hash: Sha256) -> Sha256 {
    let mut kicked = start;
    let mut len = file.metadata().map(|m| m.len()).unwrap_or(0);
    for job in jobs {
        let answer = match job {
            Job::Write { at, buf } => {
                hash.update(&buf);
                match write_sparse(&file, &buf, at, &mut len) {
                    Ok(()) => {
                        let end = at + buf.len() as u64;
                        if at < kicked {
                            kicked = at;
                        }
                        if end - kicked >= KICK {
                            start_writeback(&file, kicked, end - kicked);
                            kicked = end;
                        }
                        Done::Buf(buf)
                    }
                    Err(e) => Done::Failed(e),
                }
            }
            Job::Sync(r) => match file.sync_data() {
                Ok(()) => Done::Synced(r),
                Err(e) => Done::Failed(e),
            },
        };
        let failed = matches!(answer, Done::Failed(_));
        if done.send(answer).is_err() || failed {
            return hash;
        }
    }
    hash
}

/// Writes `buf` at `at` (past the file's end, `len`), leaving aligned spans
/// of zeros as holes; the file ends at least at `at + buf.len()` on return.
pub fn write_sparse(file: &File, buf: &[u8], at: u64, len: &mut u64) -> io::Result<()> {
    let end = at + buf.len() as u64;
    if at < *len {
        // Inside the file (not a case the download makes): its bytes may not be zeros.
        file.write_all_at(buf, at)?;
        *len = (*len).max(end);
        return Ok(());
    }
    let mut pos = 0usize;
    // The start of the data not yet written: [run, pos) is to be written.
    let mut run = 0usize;
    while pos < buf.len() {
        let abs = at + pos as u64;
        let next = ((abs / HOLE as u64 + 1) * HOLE as u64).min(end);
        let seg = &buf[pos..(next - at) as usize];
        if seg.len() == HOLE && seg == &ZEROS[..] {
            if run < pos {
                file.write_all_at(&buf[run..pos], at + run as u64)?;
            }
            run = pos + seg.len();
        }
        pos += seg.len();
    }
    if run < buf.len() {
        file.write_all_at(&buf[run..], at + run as u64)?;
    } else if end > at {
        // It ends in a hole: the file is extended over it.
        file.set_len(end)?;
    }
    *len = end;
    Ok(())
}

/// Starts writing back `len` bytes at `from` without waiting for it (a hint:
/// durability still comes only from the fsyncs).
fn start_writeback(file: &File, from: u64, len: u64) {
    let (Ok(off), Ok(n)) = (i64::try_from(from), i64::try_from(len)) else { return };
    // SAFETY: a plain syscall on a file descriptor this function borrows; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_become_holes_and_the_bytes_read_back() {
        let t = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(t.path().join("p")).unwrap();
        let mut expect = Vec::new();
        let mut len = 0;
        // Unaligned pieces: data, a long run of zeros, data, zeros at the end.
        let mut piece = vec![7u8; 1000];
        piece.extend(vec![0u8; 5 * HOLE]);
        piece.extend(vec![9u8; 3000]);
        for (i, chunk) in piece.chunks(HOLE / 3 + 17).enumerate() {
            let at = expect.len() as u64;
            write_sparse(&f, chunk, at, &mut len).unwrap();
            expect.extend_from_slice(chunk);
            assert_eq!(f.metadata().unwrap().len(), expect.len() as u64, "piece {i}");
        }
        let at = expect.len() as u64;
        write_sparse(&f, &vec![0u8; 3 * HOLE], at, &mut len).unwrap();
        expect.extend(vec![0u8; 3 * HOLE]);
        assert_eq!(std::fs::read(t.path().join("p")).unwrap(), expect);
        // Fewer blocks than bytes: the zeros were not written (where holes exist).
        use std::os::unix::fs::MetadataExt;
        let m = f.metadata().unwrap();
        if m.blocks() > 0 {
            assert!(m.blocks() * 512 < expect.len() as u64, "{} blocks for {} bytes", m.blocks(), expect.len());
        }
        // Inside the file: written as given.
        write_sparse(&f, &[0u8; HOLE], 0, &mut len).unwrap();
        assert_eq!(&std::fs::read(t.path().join("p")).unwrap()[..HOLE], &[0u8; HOLE][..]);
    }
}
