//! A small read-only reader of bbolt files (containerd's `meta.db` and its
//! snapshotters' `metadata.db`).
//!
//! Format (bbolt, little endian on the machines that write it):
//!
//! ```text
//! page      at pgid * page_size, (1 + overflow) pages long
//!   header  id u64, flags u16 (branch 1, leaf 2, meta 4, freelist 0x10), count u16, overflow u32
//! meta      pages 0 and 1, after the header: magic u32 (0xED0CDAED), version u32 (2),
//!           page_size u32, flags u32, root bucket {root pgid u64, sequence u64},
//!           freelist u64, pgid u64 (high water mark), txid u64, checksum u64
//!           (FNV-1a 64 of the 56 bytes before it); the valid one with the higher txid wins
//! branch    count elements {pos u32, ksize u32, pgid u64}; key at element + pos
//! leaf      count elements {flags u32 (bucket 1), pos u32, ksize u32, vsize u32};
//!           key at element + pos, value right after it
//! bucket    a leaf value {root pgid u64, sequence u64}; root 0 means an inline
//!           bucket: a page (header + leaf elements) follows in the value itself
//! ```
//!
//! Nothing here trusts the file: every offset is checked, pages must lie
//! inside the file and below the meta page's high water mark, the tree depth
//! and the number of pages read are capped, and every error names the file
//! and the page.

use crate::bytes::Bytes;
use crate::error::{Error, Result};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const META_LEN: usize = 64;
const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const LEAF_BUCKET: u32 = 0x01;
/// Smallest and largest page size accepted.
const MIN_PAGE: u32 = 512;
const MAX_PAGE: u32 = 1 << 20;
/// Deepest B+tree walked (bbolt trees of millions of keys are < 10 deep).
const MAX_DEPTH: usize = 32;
/// Largest page (with its overflow) read into memory.
const MAX_PAGE_BYTES: u64 = 64 << 20;
/// Most bytes read from one file over the reader's lifetime.
const MAX_TOTAL_BYTES: u64 = 512 << 20;
/// Most entries one listing returns.
pub const MAX_ENTRIES: usize = 100_000;

/// An open bbolt file.
#[derive(Debug)]
pub struct Db {
    file: File,
    path: PathBuf,
    page_size: u64,
    /// Pages at or beyond this id are not part of the committed tree.
    high_water: u64,
    root: u64,
    txid: u64,
    read: Cell<u64>,
}

/// A bucket: the root page of its B+tree in the file, or an inline page.
#[derive(Debug, Clone)]
pub struct Bucket<'a> {
    db: &'a Db,
    root: BucketRoot,
    /// Key path from the top, for messages.
    name: String,
}

#[derive(Debug, Clone)]
enum BucketRoot {
    Page(u64),
    Inline(Vec<u8>),
}

/// One key of a bucket: a value, or a nested bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    /// `None` for a nested bucket.
    pub value: Option<Vec<u8>>,
}

/// The meta page fields we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    page_size: u32,
    root: u64,
    high_water: u64,
    txid: u64,
}

/// FNV-1a, 64 bit.
fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Parse the meta page in `page` (header included); why not, if invalid.
fn parse_meta(page: &[u8]) -> std::result::Result<Meta, String> {
    let flags = Bytes::new(page).le16(8).ok_or("too short")?;
    if flags & FLAG_META == 0 {
        return Err(format!("page flags {flags:#x} are not a meta page's"));
    }
    let m = page.get(PAGE_HEADER..PAGE_HEADER + META_LEN).ok_or("too short")?;
    let magic = Bytes::new(m).le32(0).ok_or("too short")?;
    if magic != MAGIC {
        return Err(format!("magic {magic:#x}, expected {MAGIC:#x}"));
    }
    let version = Bytes::new(m).le32(4).ok_or("too short")?;
    if version != VERSION {
        return Err(format!("version {version}, expected {VERSION}"));
    }
    let sum = Bytes::new(m).le64(56).ok_or("too short")?;
    let want = fnv1a64(m.get(..56).ok_or("too short")?);
    if sum != want {
        return Err(format!("checksum {sum:#x}, computed {want:#x}"));
    }
    let page_size = Bytes::new(m).le32(8).ok_or("too short")?;
    if !(MIN_PAGE..=MAX_PAGE).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("page size {page_size} is not a power of two in {MIN_PAGE}..={MAX_PAGE}"));
    }
    Ok(Meta {
        page_size,
        root: Bytes::new(m).le64(16).ok_or("too short")?,
        high_water: Bytes::new(m).le64(40).ok_or("too short")?,
        txid: Bytes::new(m).le64(48).ok_or("too short")?,
    })
}

/// Choose between the two meta pages: the valid one with the higher txid.
fn choose_meta(
    m0: std::result::Result<Meta, String>,
    m1: std::result::Result<Meta, String>,
) -> std::result::Result<Meta, String> {
    match (m0, m1) {
        (Ok(a), Ok(b)) => Ok(if b.txid > a.txid { b } else { a }),
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(a), Err(b)) => Err(format!("meta page 0: {a}; meta page 1: {b}")),
    }
}

impl Db {
    /// Open `path` read-only and find its valid meta page.
    pub fn open(path: &Path) -> Result<Db> {
        let file = File::open(path).map_err(|e| Error::with(format!("opening {}", path.display()), e))?;
        let len = file.metadata().map_err(|e| Error::with(format!("checking {}", path.display()), e))?.len();
        let read_at = |off: u64, n: usize| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, off)
                .map_err(|e| Error::with(format!("reading {} at byte {off}", path.display()), e))?;
            Ok(buf)
        };
        let head = PAGE_HEADER + META_LEN;
        if len < head as u64 {
            return Err(Error::msg(format!("{} is {len} bytes, too short for a bbolt database", path.display())));
        }
        let m0 = parse_meta(&read_at(0, head)?);
        // Meta page 1 sits one page further; its size comes from meta 0, or
        // when meta 0 is damaged, from the common page sizes.
        let mut offsets: Vec<u64> = Vec::new();
        if let Ok(m) = &m0 {
            offsets.push(u64::from(m.page_size));
        }
        let first = offsets.first().copied();
        offsets.extend([4096u64, 8192, 16384, 65536].into_iter().filter(|o| Some(*o) != first));
        let mut m1 = Err("beyond the end of the file".to_string());
        for off in offsets {
            if off.checked_add(head as u64).is_none_or(|end| end > len) {
                continue;
            }
            let here = parse_meta(&read_at(off, head)?).and_then(|m| {
                if u64::from(m.page_size) == off {
                    Ok(m)
                } else {
                    Err(format!("page size {} but found at byte {off}", m.page_size))
                }
            });
            // Report the first place looked at, unless a later one is valid.
            if here.is_ok() || m1.as_ref().is_err_and(|e| e.starts_with("beyond")) {
                m1 = here;
            }
            if m1.is_ok() || m0.is_ok() {
                break;
            }
        }
        if let Ok(m) = &m0 {
            // Meta 1 must agree on the page size to be usable.
            if let Ok(b) = &m1 {
                if b.page_size != m.page_size {
                    m1 = Err(format!("page size {} differs from meta page 0's {}", b.page_size, m.page_size));
                }
            }
        }
        let meta = choose_meta(m0, m1)
            .map_err(|why| Error::msg(format!("{} is not a valid bbolt database: {why}", path.display())))?;
        let page_size = u64::from(meta.page_size);
        Ok(Db {
            file,
            path: path.to_path_buf(),
            page_size,
            high_water: meta.high_water,
            root: meta.root,
            txid: meta.txid,
            read: Cell::new(0),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The transaction ID of the meta page in use.
    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// The top-level bucket (whose keys are the top-level buckets).
    pub fn root(&self) -> Bucket<'_> {
        Bucket { db: self, root: BucketRoot::Page(self.root), name: String::new() }
    }

    /// Follow nested buckets from the top, e.g. `["v1", "moby", "images"]`.
    pub fn bucket_path(&self, path: &[&[u8]]) -> Result<Option<Bucket<'_>>> {
        let mut b = self.root();
        for key in path {
            match b.bucket(key)? {
                Some(next) => b = next,
                None => return Ok(None),
            }
        }
        Ok(Some(b))
    }

    fn corrupt(&self, what: String) -> Error {
        Error::msg(format!("{}: {what}: database corrupted", self.path.display()))
    }

    /// Read page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>> {
        if id < 2 || id >= self.high_water {
            return Err(
                self.corrupt(format!("page {id} is referenced but lies outside the data pages 2..{}", self.high_water))
            );
        }
        let off =
            id.checked_mul(self.page_size).ok_or_else(|| self.corrupt(format!("page {id} lies beyond any file")))?;
        let mut head = [0u8; PAGE_HEADER];
        self.read_exact(&mut head, off, id)?;
        let overflow = Bytes::new(&head).le32(12).unwrap_or(0);
        let size = u64::from(overflow)
            .checked_add(1)
            .and_then(|n| n.checked_mul(self.page_size))
            .filter(|s| *s <= MAX_PAGE_BYTES)
            .ok_or_else(|| self.corrupt(format!("page {id} claims {overflow} overflow pages")))?;
        if id.checked_add(u64::from(overflow)).is_none_or(|last| last >= self.high_water) {
            return Err(self.corrupt(format!(
                "page {id} with {overflow} overflow pages runs past the high water mark {}",
                self.high_water
            )));
        }
        let n = usize::try_from(size).map_err(|_| self.corrupt(format!("page {id} is too large")))?;
        let mut buf = vec![0u8; n];
        self.read_exact(&mut buf, off, id)?;
        let stored = Bytes::new(&buf).le64(0).unwrap_or(u64::MAX);
        if stored != id {
            return Err(self.corrupt(format!("page {id} says it is page {stored}")));
        }
        Ok(buf)
    }

    fn read_exact(&self, buf: &mut [u8], off: u64, id: u64) -> Result<()> {
        let total = self.read.get().saturating_add(buf.len() as u64);
        if total > MAX_TOTAL_BYTES {
            return Err(Error::msg(format!(
                "{}: more than {} MiB read: giving up (database corrupted or unexpectedly large)",
                self.path.display(),
                MAX_TOTAL_BYTES >> 20
            )));
        }
        self.read.set(total);
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| Error::with(format!("{}: reading page {id} at byte {off}", self.path.display()), e))
    }
}

/// A parsed leaf element: flags, key and value ranges within the page.
struct LeafElem<'p> {
    flags: u32,
    key: &'p [u8],
    value: &'p [u8],
}

/// A page's type and element count, checked against its length.
fn page_kind(page: &[u8]) -> Option<(u16, usize)> {
    let flags = Bytes::new(page).le16(8)?;
    let count = usize::from(Bytes::new(page).le16(10)?);
    let need = count.checked_mul(ELEMENT)?.checked_add(PAGE_HEADER)?;
    (need <= page.len()).then_some((flags, count))
}

fn leaf_elem(page: &[u8], i: usize) -> Option<LeafElem<'_>> {
    let at = PAGE_HEADER.checked_add(i.checked_mul(ELEMENT)?)?;
    let flags = Bytes::new(page).le32(at)?;
    let pos = usize::try_from(Bytes::new(page).le32(at.checked_add(4)?)?).ok()?;
    let ksize = usize::try_from(Bytes::new(page).le32(at.checked_add(8)?)?).ok()?;
    let vsize = usize::try_from(Bytes::new(page).le32(at.checked_add(12)?)?).ok()?;
    let kstart = at.checked_add(pos)?;
    let kend = kstart.checked_add(ksize)?;
    let vend = kend.checked_add(vsize)?;
    Some(LeafElem { flags, key: page.get(kstart..kend)?, value: page.get(kend..vend)? })
}

fn branch_elem(page: &[u8], i: usize) -> Option<(&[u8], u64)> {
    let at = PAGE_HEADER.checked_add(i.checked_mul(ELEMENT)?)?;
    let pos = usize::try_from(Bytes::new(page).le32(at)?).ok()?;
    let ksize = usize::try_from(Bytes::new(page).le32(at.checked_add(4)?)?).ok()?;
    let child = Bytes::new(page).le64(at.checked_add(8)?)?;
    let kstart = at.checked_add(pos)?;
    Some((page.get(kstart..kstart.checked_add(ksize)?)?, child))
}

impl<'a> Bucket<'a> {
    /// The key path of this bucket, `/`-separated (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn corrupt(&self, page: Option<u64>, what: &str) -> Error {
        let at = match page {
            Some(p) => format!("page {p}"),
            None => "an inline page".to_string(),
        };
        self.db.corrupt(format!("bucket {:?}: {at}: {what}", self.name))
    }

    /// A plain value under `key` (`None` if absent or a nested bucket).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.find(key)?.and_then(|(flags, v)| (flags & LEAF_BUCKET == 0).then_some(v)))
    }

    /// The nested bucket under `key` (`None` if absent or a plain value).
    pub fn bucket(&self, key: &[u8]) -> Result<Option<Bucket<'a>>> {
        let Some((flags, v)) = self.find(key)? else { return Ok(None) };
        if flags & LEAF_BUCKET == 0 {
            return Ok(None);
        }
        self.nested(key, &v).map(Some)
    }

    fn nested(&self, key: &[u8], v: &[u8]) -> Result<Bucket<'a>> {
        let name = if self.name.is_empty() {
            String::from_utf8_lossy(key).into_owned()
        } else {
            format!("{}/{}", self.name, String::from_utf8_lossy(key))
        };
        let root = Bytes::new(v).le64(0).ok_or_else(|| {
            self.db.corrupt(format!("bucket {name:?}: its header is {} bytes, expected {BUCKET_HEADER}", v.len()))
        })?;
        let root = if root == 0 {
            let page = v.get(BUCKET_HEADER..).unwrap_or_default().to_vec();
            BucketRoot::Inline(page)
        } else {
            BucketRoot::Page(root)
        };
        Ok(Bucket { db: self.db, root, name })
    }

    /// Walk from the root to the leaf that would hold `key`; then find it.
    fn find(&self, key: &[u8]) -> Result<Option<(u32, Vec<u8>)>> {
        let (mut page, mut id) = match &self.root {
            BucketRoot::Inline(p) => (p.clone(), None),
            BucketRoot::Page(p) => (self.db.page(*p)?, Some(*p)),
        };
        for _ in 0..MAX_DEPTH {
            let (flags, count) = page_kind(&page).ok_or_else(|| self.corrupt(id, "truncated page"))?;
            if flags & FLAG_LEAF != 0 {
                for i in 0..count {
                    let e = leaf_elem(&page, i).ok_or_else(|| self.corrupt(id, "leaf element out of bounds"))?;
                    if e.key == key {
                        return Ok(Some((e.flags, e.value.to_vec())));
                    }
                }
                return Ok(None);
            }
            if flags & FLAG_BRANCH == 0 || id.is_none() {
                return Err(self.corrupt(id, &format!("page flags {flags:#x} are neither branch nor leaf")));
            }
            // The child whose first key is the last one <= key.
            let mut child = None;
            for i in 0..count {
                let (k, c) = branch_elem(&page, i).ok_or_else(|| self.corrupt(id, "branch element out of bounds"))?;
                if i == 0 || k <= key {
                    child = Some(c);
                }
                if k > key {
                    break;
                }
            }
            let Some(c) = child else { return Ok(None) };
            page = self.db.page(c)?;
            id = Some(c);
        }
        Err(self.corrupt(id, &format!("tree deeper than {MAX_DEPTH} levels (a cycle?)")))
    }

    /// Every key of this bucket in order, at most `limit` (an error beyond).
    pub fn entries(&self, limit: usize) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        match &self.root {
            BucketRoot::Inline(p) => self.collect(p, None, limit, &mut out)?,
            BucketRoot::Page(p) => {
                let page = self.db.page(*p)?;
                self.collect(&page, Some(*p), limit, &mut out)?
            }
        }
        Ok(out)
    }

    /// Nested buckets of this bucket, by key, in order (at most `limit`).
    pub fn buckets(&self, limit: usize) -> Result<Vec<(Vec<u8>, Bucket<'a>)>> {
        let mut out = Vec::new();
        let mut raw = Vec::new();
        match &self.root {
            BucketRoot::Inline(p) => self.collect_raw(p, None, 0, limit, &mut raw, &mut BTreeSet::new())?,
            BucketRoot::Page(p) => {
                let page = self.db.page(*p)?;
                self.collect_raw(&page, Some(*p), 0, limit, &mut raw, &mut BTreeSet::from([*p]))?
            }
        }
        for (flags, k, v) in raw {
            if flags & LEAF_BUCKET != 0 {
                let b = self.nested(&k, &v)?;
                out.push((k, b));
            }
        }
        Ok(out)
    }

    fn collect(&self, page: &[u8], id: Option<u64>, limit: usize, out: &mut Vec<Entry>) -> Result<()> {
        let mut raw = Vec::new();
        self.collect_raw(page, id, 0, limit, &mut raw, &mut BTreeSet::from_iter(id))?;
        out.extend(
            raw.into_iter().map(|(flags, key, v)| Entry { key, value: (flags & LEAF_BUCKET == 0).then_some(v) }),
        );
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn collect_raw(
        &self,
        page: &[u8],
        id: Option<u64>,
        depth: usize,
        limit: usize,
        out: &mut Vec<(u32, Vec<u8>, Vec<u8>)>,
        visited: &mut BTreeSet<u64>,
    ) -> Result<()> {
        if depth >= MAX_DEPTH {
            return Err(self.corrupt(id, &format!("tree deeper than {MAX_DEPTH} levels (a cycle?)")));
        }
        let (flags, count) = page_kind(page).ok_or_else(|| self.corrupt(id, "truncated page"))?;
        if flags & FLAG_LEAF != 0 {
            for i in 0..count {
                let e = leaf_elem(page, i).ok_or_else(|| self.corrupt(id, "leaf element out of bounds"))?;
                if out.len() >= limit {
                    return Err(Error::msg(format!(
                        "{}: bucket {:?} has more than {limit} keys",
                        self.db.path.display(),
                        self.name
                    )));
                }
                out.push((e.flags, e.key.to_vec(), e.value.to_vec()));
            }
            return Ok(());
        }
        if flags & FLAG_BRANCH == 0 || id.is_none() {
            return Err(self.corrupt(id, &format!("page flags {flags:#x} are neither branch nor leaf")));
        }
        for i in 0..count {
            let (_, c) = branch_elem(page, i).ok_or_else(|| self.corrupt(id, "branch element out of bounds"))?;
            // A B+tree never reaches a page twice: a repeat is a cycle.
            if !visited.insert(c) {
                return Err(self.corrupt(id, &format!("page {c} is reached twice (a cycle)")));
            }
            let child = self.db.page(c)?;
            self.collect_raw(&child, Some(c), depth.saturating_add(1), limit, out, visited)?;
        }
        Ok(())
    }
}

/// Decode a Go `binary.PutUvarint` value (how containerd stores ids and sizes).
pub fn uvarint(b: &[u8]) -> Option<u64> {
    let mut x: u64 = 0;
    for (i, byte) in b.iter().enumerate().take(10) {
        let low = u64::from(byte & 0x7f);
        let shift = u32::try_from(i.checked_mul(7)?).ok()?;
        if i == 9 && *byte > 1 {
            return None;
        }
        x |= low.checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return (i.checked_add(1)? == b.len()).then_some(x);
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    //! A minimal bbolt writer for tests (one leaf per bucket unless asked for
    //! branch pages), so the reader is checked against known content; the
    //! loop tests (tests/stores_loop.rs) check it against files containerd wrote.
    use super::*;

    /// A test tree: keys map to values or nested trees.
    #[derive(Clone)]
    pub enum Node {
        Value(Vec<u8>),
        Bucket(Vec<(Vec<u8>, Node)>, bool),
    }

    pub fn bucket(entries: Vec<(&str, Node)>) -> Node {
        let mut e: Vec<(Vec<u8>, Node)> = entries.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v)).collect();
        e.sort_by(|a, b| a.0.cmp(&b.0));
        Node::Bucket(e, false)
    }

    /// Stored inline in the parent's leaf.
    pub fn inline(entries: Vec<(&str, Node)>) -> Node {
        match bucket(entries) {
            Node::Bucket(e, _) => Node::Bucket(e, true),
            n => n,
        }
    }

    pub fn val(s: &str) -> Node {
        Node::Value(s.as_bytes().to_vec())
    }

    pub struct Writer {
        pub ps: usize,
        pub pages: Vec<Vec<u8>>,
        /// Leaves hold at most this many keys; more make branch pages.
        pub per_leaf: usize,
    }

    fn leaf_page(ps: usize, id: u64, items: &[(u32, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut p = vec![0u8; PAGE_HEADER + items.len() * ELEMENT];
        p[0..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&FLAG_LEAF.to_le_bytes());
        p[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
        let mut data = Vec::new();
        for (i, (flags, k, v)) in items.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            let pos = p.len() + data.len() - at;
            p[at..at + 4].copy_from_slice(&flags.to_le_bytes());
            p[at + 4..at + 8].copy_from_slice(&(pos as u32).to_le_bytes());
            p[at + 8..at + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            p[at + 12..at + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            data.extend_from_slice(k);
            data.extend_from_slice(v);
        }
        p.extend(data);
        let _ = ps;
        p
    }

    impl Writer {
        pub fn new(ps: usize, per_leaf: usize) -> Writer {
            Writer { ps, pages: vec![Vec::new(), Vec::new()], per_leaf }
        }

        /// Append a page (padding to whole pages, setting overflow); its id.
        fn add(&mut self, mut p: Vec<u8>) -> u64 {
            let id = self.pages.len() as u64;
            p[0..8].copy_from_slice(&id.to_le_bytes());
            let n = p.len().div_ceil(self.ps).max(1);
            p[12..16].copy_from_slice(&((n - 1) as u32).to_le_bytes());
            p.resize(n * self.ps, 0);
            for _ in 0..n {
                self.pages.push(Vec::new());
            }
            self.pages[id as usize] = p;
            id
        }

        /// Write a bucket's tree; returns the bucket value (header + inline page).
        pub fn write_bucket(&mut self, entries: &[(Vec<u8>, Node)], inline: bool) -> Vec<u8> {
            let mut items = Vec::new();
            for (k, n) in entries {
                match n {
                    Node::Value(v) => items.push((0u32, k.clone(), v.clone())),
                    Node::Bucket(e, inl) => {
                        let v = self.write_bucket(e, *inl);
                        items.push((LEAF_BUCKET, k.clone(), v));
                    }
                }
            }
            if inline {
                let mut v = vec![0u8; BUCKET_HEADER];
                v.extend(leaf_page(self.ps, 0, &items));
                return v;
            }
            let root = self.write_tree(&items);
            let mut v = root.to_le_bytes().to_vec();
            v.extend([0u8; 8]);
            v
        }

        fn write_tree(&mut self, items: &[(u32, Vec<u8>, Vec<u8>)]) -> u64 {
            if items.len() <= self.per_leaf {
                let p = leaf_page(self.ps, 0, items);
                return self.add(p);
            }
            let mut children = Vec::new();
            for c in items.chunks(self.per_leaf) {
                let id = self.write_tree(c);
                children.push((c[0].1.clone(), id));
            }
            let mut p = vec![0u8; PAGE_HEADER + children.len() * ELEMENT];
            p[8..10].copy_from_slice(&FLAG_BRANCH.to_le_bytes());
            p[10..12].copy_from_slice(&(children.len() as u16).to_le_bytes());
            let mut data = Vec::new();
            for (i, (k, c)) in children.iter().enumerate() {
                let at = PAGE_HEADER + i * ELEMENT;
                let pos = p.len() + data.len() - at;
                p[at..at + 4].copy_from_slice(&(pos as u32).to_le_bytes());
                p[at + 4..at + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
                p[at + 8..at + 16].copy_from_slice(&c.to_le_bytes());
                data.extend_from_slice(k);
            }
            p.extend(data);
            self.add(p)
        }

        /// The whole file, with meta pages for `txid` (meta 0) and `txid + 1`
        /// (meta 1, pointing at `root1` if given).
        pub fn finish(mut self, root: u64, txid: u64, root1: Option<u64>) -> Vec<u8> {
            let high = self.pages.len() as u64;
            for (i, r) in [(0usize, root), (1, root1.unwrap_or(root))] {
                let mut p = vec![0u8; self.ps];
                p[0..8].copy_from_slice(&(i as u64).to_le_bytes());
                p[8..10].copy_from_slice(&FLAG_META.to_le_bytes());
                let m = &mut p[PAGE_HEADER..PAGE_HEADER + META_LEN];
                m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
                m[4..8].copy_from_slice(&VERSION.to_le_bytes());
                m[8..12].copy_from_slice(&(self.ps as u32).to_le_bytes());
                m[16..24].copy_from_slice(&r.to_le_bytes());
                m[40..48].copy_from_slice(&high.to_le_bytes());
                m[48..56].copy_from_slice(&(txid + i as u64).to_le_bytes());
                let sum = fnv1a64(&m[..56]);
                m[56..64].copy_from_slice(&sum.to_le_bytes());
                self.pages[i] = p;
            }
            self.pages.concat()
        }
    }

    /// A database file whose top level holds `top`.
    pub fn build(top: Node, ps: usize, per_leaf: usize) -> Vec<u8> {
        let mut w = Writer::new(ps, per_leaf);
        let Node::Bucket(entries, _) = top else { panic!("top must be a bucket") };
        let v = w.write_bucket(&entries, false);
        let root = u64::from_le_bytes(v[0..8].try_into().unwrap());
        w.finish(root, 7, None)
    }

    pub struct TempFile(pub PathBuf);
    impl TempFile {
        pub fn new(data: &[u8]) -> TempFile {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "dockroot-bbolt-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::write(&p, data).unwrap();
            TempFile(p)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn sample() -> Node {
        let many: Vec<(String, Node)> = (0..50).map(|i| (format!("key{i:03}"), val(&format!("value {i}")))).collect();
        let many: Vec<(&str, Node)> = many.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        bucket(vec![(
            "v1",
            bucket(vec![
                ("version", val("3")),
                (
                    "moby",
                    bucket(vec![("images", bucket(many)), ("small", inline(vec![("a", val("1")), ("b", val("2"))]))]),
                ),
                ("big", Node::Value(vec![b'x'; 10_000])),
            ]),
        )])
    }

    #[test]
    fn reads_values_nested_inline_branch_and_overflow() {
        for (ps, per_leaf) in [(4096, 1000), (4096, 4), (1024, 3)] {
            let f = TempFile::new(&build(sample(), ps, per_leaf));
            let db = Db::open(&f.0).unwrap();
            assert_eq!(db.txid(), 8, "meta 1 has the higher txid");
            let v1 = db.root().bucket(b"v1").unwrap().unwrap();
            assert_eq!(v1.get(b"version").unwrap().as_deref(), Some(&b"3"[..]));
            assert_eq!(v1.get(b"big").unwrap().map(|v| v.len()), Some(10_000), "overflow pages");
            assert_eq!(v1.get(b"moby").unwrap(), None, "a bucket is not a value");
            assert!(v1.bucket(b"version").unwrap().is_none(), "a value is not a bucket");
            let images = db.bucket_path(&[b"v1", b"moby", b"images"]).unwrap().unwrap();
            assert_eq!(images.name(), "v1/moby/images");
            for i in [0, 1, 3, 4, 5, 17, 48, 49] {
                let k = format!("key{i:03}");
                assert_eq!(
                    images.get(k.as_bytes()).unwrap(),
                    Some(format!("value {i}").into_bytes()),
                    "{ps} {per_leaf} {k}"
                );
            }
            assert_eq!(images.get(b"key050").unwrap(), None);
            assert_eq!(images.get(b"a").unwrap(), None);
            assert_eq!(images.get(b"zzz").unwrap(), None);
            let all = images.entries(MAX_ENTRIES).unwrap();
            assert_eq!(all.len(), 50);
            assert_eq!(all[7].key, b"key007");
            assert!(images.entries(10).unwrap_err().to_string().contains("more than 10 keys"));
            let small = db.bucket_path(&[b"v1", b"moby", b"small"]).unwrap().unwrap();
            assert_eq!(small.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
            let subs = db.bucket_path(&[b"v1", b"moby"]).unwrap().unwrap().buckets(10).unwrap();
            assert_eq!(subs.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), vec![&b"images"[..], b"small"]);
            assert!(db.bucket_path(&[b"v1", b"nope"]).unwrap().is_none());
        }
    }

    #[test]
    fn meta_choice_and_damage() {
        let mut w = Writer::new(4096, 1000);
        let a = w.write_bucket(&[(b"k".to_vec(), val("old"))], false);
        let b = w.write_bucket(&[(b"k".to_vec(), val("new"))], false);
        let ra = u64::from_le_bytes(a[0..8].try_into().unwrap());
        let rb = u64::from_le_bytes(b[0..8].try_into().unwrap());
        let file = w.finish(ra, 1, Some(rb));
        let get = |bytes: &[u8]| -> Result<Option<Vec<u8>>> {
            let f = TempFile::new(bytes);
            let db = Db::open(&f.0)?;
            db.root().get(b"k")
        };
        assert_eq!(get(&file).unwrap().as_deref(), Some(&b"new"[..]));
        // Damaged meta 1 (checksum): meta 0 is used.
        let mut bad1 = file.clone();
        bad1[4096 + PAGE_HEADER + 20] ^= 1;
        assert_eq!(get(&bad1).unwrap().as_deref(), Some(&b"old"[..]));
        // Damaged meta 0: meta 1 is found at the default page size.
        let mut bad0 = file.clone();
        bad0[PAGE_HEADER] ^= 1;
        assert_eq!(get(&bad0).unwrap().as_deref(), Some(&b"new"[..]));
        // Both damaged.
        let mut both = bad0.clone();
        both[4096 + PAGE_HEADER + 20] ^= 1;
        let e = get(&both).unwrap_err().to_string();
        assert!(
            e.contains("not a valid bbolt database") && e.contains("meta page 0: magic") && e.contains("checksum"),
            "{e}"
        );
        // Not a database at all, or too short.
        assert!(get(&[0u8; 10]).unwrap_err().to_string().contains("too short"));
        assert!(get(&vec![0u8; 8192]).unwrap_err().to_string().contains("not a valid bbolt database"));
    }

    #[test]
    fn corrupt_pages_are_errors_naming_file_and_page() {
        let file = build(sample(), 1024, 3);
        let f = TempFile::new(&file);
        // A root pointing outside the data pages.
        let mut w = Writer::new(4096, 10);
        let _ = w.write_bucket(&[(b"k".to_vec(), val("v"))], false);
        let out = TempFile::new(&w.finish(99, 1, None));
        let e = Db::open(&out.0).unwrap().root().get(b"k").unwrap_err().to_string();
        assert!(e.contains(&out.0.display().to_string()) && e.contains("page 99"), "{e}");
        // Truncated file: pages missing.
        let cut = TempFile::new(&file[..file.len() / 2]);
        let db = Db::open(&cut.0).unwrap();
        let r =
            db.bucket_path(&[b"v1", b"moby", b"images"]).and_then(|b| b.map(|b| b.entries(MAX_ENTRIES)).transpose());
        assert!(r.is_err(), "{r:?}");
        drop(f);
    }

    /// Single-byte changes all over a small database: never a panic, and
    /// reading either works or fails with a message naming the file.
    #[test]
    fn byte_flips_never_panic() {
        let file = build(sample(), 512, 3);
        let path = std::env::temp_dir().join(format!("dockroot-bbolt-flip-{}", std::process::id()));
        // Every 17th byte (17 is prime to the 16-byte element and header
        // sizes, so every field offset is hit), three flips each.
        for pos in (0..file.len()).step_by(17) {
            for x in [0x01u8, 0x80, 0xff] {
                let mut b = file.clone();
                b[pos] ^= x;
                std::fs::write(&path, &b).unwrap();
                let r = (|| -> Result<usize> {
                    let db = Db::open(&path)?;
                    let mut n = 0;
                    if let Some(m) = db.bucket_path(&[b"v1", b"moby"])? {
                        for (_, b) in m.buckets(1000)? {
                            n += b.entries(1000)?.len();
                        }
                    }
                    n += db.root().entries(1000)?.len();
                    let _ = db.bucket_path(&[b"v1", b"moby", b"images"])?.map(|b| b.get(b"key020"));
                    Ok(n)
                })();
                if let Err(e) = r {
                    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn uvarints() {
        assert_eq!(uvarint(&[0]), Some(0));
        assert_eq!(uvarint(&[5]), Some(5));
        assert_eq!(uvarint(&[0xac, 0x02]), Some(300));
        assert_eq!(uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), Some(u64::MAX));
        assert_eq!(uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]), None);
        assert_eq!(uvarint(&[]), None);
        assert_eq!(uvarint(&[0x80]), None);
        assert_eq!(uvarint(&[1, 2]), None, "trailing bytes");
    }
}
