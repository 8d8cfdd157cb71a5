//! Following a trace while it is written: what `toktrace watch` reads.
//!
//! A [`Follower`] remembers, per process directory, which segment it is in
//! and how far it has read, and each [`Follower::poll`] hands back only the
//! records written since. What a live trace does to a reader is normal here,
//! not damage:
//! - a frame cut by the end of the newest segment is the writer mid-flush:
//!   it is read on a later poll, once complete;
//! - a segment is final once a newer one exists (the writer finishes a
//!   segment before it opens the next): only then is a cut frame a torn tail;
//! - segments deleted by the disk budget before they were read are counted in
//!   [`Polled::segments_missed`] and skipped; a segment deleted while being
//!   read is finished with what was read;
//! - new process directories (an engine restarted, a second replica) are
//!   picked up on the next poll.
//!
//! Memory is what one poll reads: nothing is kept of records once handed out.

use crate::format::frame::PREAMBLE_LEN;
use crate::reader::{
    decode_frames_until, format_version, io_error, segment_files, ReadError, ReadRecord,
    ReadWarning, Segment, Tail,
};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Most bytes read from one segment per poll, so one poll of a large backlog
/// stays a bounded amount of memory; the rest comes on the next polls.
const MAX_READ_PER_POLL: u64 = 64 << 20;

/// Records new since the last poll, per process directory.
#[derive(Debug, Default)]
pub struct Polled {
    /// (process directory, its new records in file order).
    pub records: Vec<(PathBuf, Vec<ReadRecord>)>,
    /// What was worked around.
    pub warnings: Vec<ReadWarning>,
    /// Segments deleted (by the disk budget) before they could be read.
    pub segments_missed: u64,
    /// Bytes read by this poll.
    pub bytes: u64,
    /// Whether a poll right away would read more (a backlog was cut short).
    pub more: bool,
}

/// Where reading stands in one process directory.
#[derive(Debug, Default)]
struct ProcessCursor {
    /// Index of the segment being read (None before the first one).
    segment: Option<u32>,
    /// Bytes of it consumed (0: preamble not read yet).
    offset: u64,
    /// Format version its preamble declared.
    version: u16,
}

/// Follows a trace directory (or one process directory) as it grows.
#[derive(Debug)]
pub struct Follower {
    root: PathBuf,
    /// The root is itself a process directory.
    single: bool,
    cursors: BTreeMap<PathBuf, ProcessCursor>,
    buf: Vec<u8>,
}

impl Follower {
    /// Follow `root`: a trace directory (process directories inside, which
    /// may not exist yet) or one process directory. The path must exist.
    pub fn new(root: &Path) -> Result<Follower, ReadError> {
        let meta = fs::metadata(root).map_err(|e| io_error(root, e))?;
        if !meta.is_dir() {
            return Err(ReadError::NotATrace {
                path: root.to_path_buf(),
                why: "a trace being written is a directory; this is a file".into(),
            });
        }
        let single = !segment_files(root)?.is_empty();
        Ok(Follower {
            root: root.to_path_buf(),
            single,
            cursors: BTreeMap::new(),
            buf: Vec::new(),
        })
    }

    /// Process directories followed so far.
    pub fn processes(&self) -> usize {
        self.cursors.len()
    }

    /// Read what was written since the last poll. Only the root vanishing or
    /// a segment of an unknown format version is an error.
    pub fn poll(&mut self) -> Result<Polled, ReadError> {
        let mut out = Polled::default();
        for dir in self.process_dirs()? {
            self.cursors.entry(dir).or_default();
        }
        let dirs: Vec<PathBuf> = self.cursors.keys().cloned().collect();
        for dir in dirs {
            let records = self.poll_process(&dir, &mut out)?;
            if !records.is_empty() {
                out.records.push((dir, records));
            }
        }
        Ok(out)
    }

    fn process_dirs(&self) -> Result<Vec<PathBuf>, ReadError> {
        if self.single {
            return Ok(vec![self.root.clone()]);
        }
        let mut dirs = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(|e| io_error(&self.root, e))? {
            let Ok(entry) = entry else { continue };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
        Ok(dirs)
    }

    /// New records of one process directory: the rest of the current
    /// segment and of every segment after it.
    fn poll_process(&mut self, dir: &Path, out: &mut Polled) -> Result<Vec<ReadRecord>, ReadError> {
        let mut records = Vec::new();
        // A process directory that vanished (removed by hand) has nothing new.
        let Ok(files) = segment_files(dir) else {
            return Ok(records);
        };
        let Some(cursor) = self.cursors.get_mut(dir) else {
            return Ok(records);
        };
        // Segments from the current one on; when the current one was deleted
        // under us (the disk budget), what was read of it stands.
        let mut pending: Vec<(u32, PathBuf)> = files
            .into_iter()
            .filter(|(ix, _)| cursor.segment.is_none_or(|cur| *ix >= cur))
            .collect();
        let last = pending.len();
        for (i, (ix, path)) in pending.drain(..).enumerate() {
            let is_final = i + 1 < last;
            match cursor.segment {
                Some(cur) if cur == ix => {}
                Some(cur) => {
                    out.segments_missed += u64::from(ix.saturating_sub(cur + 1));
                    *cursor = ProcessCursor {
                        segment: Some(ix),
                        ..ProcessCursor::default()
                    };
                }
                None => {
                    cursor.segment = Some(ix);
                    cursor.offset = 0;
                }
            }
            let read = read_from(&path, cursor, is_final, &mut self.buf, out)?;
            records.extend(read.records);
            out.warnings.extend(read.warnings);
            if out.more || !is_final {
                break;
            }
        }
        Ok(records)
    }
}

/// Read `path` from the cursor's offset; a final segment is read to its end.
fn read_from(
    path: &Path,
    cursor: &mut ProcessCursor,
    is_final: bool,
    buf: &mut Vec<u8>,
    out: &mut Polled,
) -> Result<Segment, ReadError> {
    let mut segment = Segment {
        path: path.to_path_buf(),
        format_version: cursor.version,
        records: Vec::new(),
        warnings: Vec::new(),
    };
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        // Deleted by the disk budget between listing and opening.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(segment),
        Err(e) => return Err(io_error(path, e)),
    };
    buf.clear();
    file.seek(SeekFrom::Start(cursor.offset))
        .and_then(|_| (&mut file).take(MAX_READ_PER_POLL).read_to_end(buf))
        .map_err(|e| io_error(path, e))?;
    out.bytes += buf.len() as u64;
    let cut_short = buf.len() as u64 == MAX_READ_PER_POLL;
    out.more |= cut_short;
    let mut from = 0;
    if cursor.offset == 0 {
        if buf.len() < PREAMBLE_LEN {
            if is_final {
                segment.warnings.push(ReadWarning::Empty {
                    path: path.to_path_buf(),
                });
            }
            return Ok(segment);
        }
        cursor.version = format_version(path, buf)?;
        segment.format_version = cursor.version;
        from = PREAMBLE_LEN;
    }
    // A final segment read whole ends in a torn tail if it ends mid-frame.
    let tail = if is_final && !cut_short {
        Tail::Torn
    } else {
        Tail::Pending
    };
    let stopped = decode_frames_until(buf, from, cursor.offset, &mut segment, tail);
    cursor.offset += stopped as u64;
    Ok(segment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Record, RequestFinish};
    use crate::format::frame::{encode_frame, preamble};
    use crate::format::FORMAT_VERSION;
    use std::io::Write;

    fn frame(req: u32) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(
            &Record::Finish(RequestFinish {
                req,
                time_ns: u64::from(req),
                reason: None,
                output_tokens: None,
            }),
            &mut out,
        )
        .expect("encodes");
        out
    }

    fn keys(polled: &Polled) -> Vec<u32> {
        polled
            .records
            .iter()
            .flat_map(|(_, r)| r.iter())
            .filter_map(|r| match &r.record {
                Record::Finish(f) => Some(f.req),
                _ => None,
            })
            .collect()
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("opens");
        f.write_all(bytes).expect("writes");
    }

    #[test]
    fn a_growing_segment_is_read_in_pieces_and_a_cut_frame_waits() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("h-p1-1");
        fs::create_dir(&dir).expect("mkdir");
        let mut f = Follower::new(root.path()).expect("follows");
        assert!(keys(&f.poll().expect("polls")).is_empty());

        let seg = dir.join("seg-000000.tts");
        append(&seg, &preamble(FORMAT_VERSION));
        append(&seg, &frame(1));
        let second = frame(2);
        append(&seg, &second[..5]);
        let polled = f.poll().expect("polls");
        assert_eq!(keys(&polled), vec![1]);
        assert!(polled.warnings.is_empty(), "{:?}", polled.warnings);

        append(&seg, &second[5..]);
        append(&seg, &frame(3));
        assert_eq!(keys(&f.poll().expect("polls")), vec![2, 3]);
        assert!(keys(&f.poll().expect("polls")).is_empty());
    }

    #[test]
    fn rotation_finishes_the_old_segment_and_a_cut_frame_there_is_torn() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("h-p1-1");
        fs::create_dir(&dir).expect("mkdir");
        let seg0 = dir.join("seg-000000.tts");
        append(&seg0, &preamble(FORMAT_VERSION));
        append(&seg0, &frame(1));
        let mut f = Follower::new(root.path()).expect("follows");
        assert_eq!(keys(&f.poll().expect("polls")), vec![1]);
        append(&seg0, &frame(2)[..4]);
        let seg1 = dir.join("seg-000001.tts");
        append(&seg1, &preamble(FORMAT_VERSION));
        append(&seg1, &frame(3));
        let polled = f.poll().expect("polls");
        assert_eq!(keys(&polled), vec![3]);
        assert!(matches!(
            polled.warnings[..],
            [ReadWarning::TornTail { .. }]
        ));
    }

    #[test]
    fn segments_deleted_before_they_were_read_are_counted() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("h-p1-1");
        fs::create_dir(&dir).expect("mkdir");
        let seg = |ix: u32| dir.join(crate::format::segment_file_name(ix));
        append(&seg(0), &preamble(FORMAT_VERSION));
        append(&seg(0), &frame(1));
        let mut f = Follower::new(root.path()).expect("follows");
        assert_eq!(keys(&f.poll().expect("polls")), vec![1]);
        for ix in 1..4 {
            append(&seg(ix), &preamble(FORMAT_VERSION));
            append(&seg(ix), &frame(10 + ix));
        }
        // The budget removes 0, 1 and 2 before the follower comes back.
        for ix in 0..3 {
            fs::remove_file(seg(ix)).expect("removes");
        }
        let polled = f.poll().expect("polls");
        assert_eq!(keys(&polled), vec![13]);
        assert_eq!(polled.segments_missed, 2);
    }

    #[test]
    fn a_new_process_directory_is_picked_up() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut f = Follower::new(root.path()).expect("follows");
        assert!(f.poll().expect("polls").records.is_empty());
        for (name, key) in [("h-p1-1", 1), ("h-p2-2", 2)] {
            let dir = root.path().join(name);
            fs::create_dir(&dir).expect("mkdir");
            append(&dir.join("seg-000000.tts"), &preamble(FORMAT_VERSION));
            append(&dir.join("seg-000000.tts"), &frame(key));
        }
        let polled = f.poll().expect("polls");
        assert_eq!(keys(&polled), vec![1, 2]);
        assert_eq!(f.processes(), 2);
    }

    #[test]
    fn a_missing_root_and_an_unknown_version_are_errors() {
        assert!(matches!(
            Follower::new(Path::new("/nonexistent/toktrace")),
            Err(ReadError::NotFound(_))
        ));
        let root = tempfile::tempdir().expect("tempdir");
        let seg = root.path().join("seg-000000.tts");
        append(&seg, &preamble(FORMAT_VERSION + 7));
        let mut f = Follower::new(root.path()).expect("follows");
        assert!(matches!(f.poll(), Err(ReadError::UnknownVersion { .. })));
    }
}
