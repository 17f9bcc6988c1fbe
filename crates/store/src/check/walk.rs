//! The structural walk: every page reachable from the newest meta page, read with plain
//! reads (never through LMDB's map, where a bad page number is a fault, not an error).
//!
//! LMDB keeps no checksums, so what can be checked is what LMDB relies on: each page
//! says its own number and is of the kind its parent expects; node pointers, keys and
//! values lie inside their page; keys are in order, within the bounds their parent's
//! separators give; every child, overflow run and free-list entry lies within the last
//! page and the file; no page is reached twice, nor both used and listed free; and each
//! tree's shape matches the counts its database record keeps.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::layout::{
    self, DbRecord, F_BIGDATA, F_DUPDATA, F_SUBDATA, KeyOrder, META_PAGES, META_READ_BYTES, Meta,
    Node, P_BRANCH, P_LEAF, P_OVERFLOW, PAGE_HEADER_BYTES, PAGE_INVALID, PageHeader,
};
use crate::error::{Error, Result};

/// Which tree a page belongs to, for error messages and the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TreeName {
    /// LMDB's free-page database.
    Free,
    /// LMDB's main database (the names of the named databases).
    Main,
    /// A named database: a table of this store.
    Named(String),
}

impl fmt::Display for TreeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeName::Free => f.write_str("LMDB's free-page database"),
            TreeName::Main => f.write_str("LMDB's main database"),
            TreeName::Named(name) => write!(f, "table {name}"),
        }
    }
}

/// What one tree holds, as walked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TreeCounts {
    pub(crate) branch_pages: u64,
    pub(crate) leaf_pages: u64,
    pub(crate) overflow_pages: u64,
    pub(crate) entries: u64,
}

impl TreeCounts {
    pub(crate) fn pages(&self) -> u64 {
        self.branch_pages + self.leaf_pages + self.overflow_pages
    }
}

/// The newest meta page, checked, and the file it came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetaChoice {
    pub(crate) slot: u64,
    pub(crate) meta: Meta,
    pub(crate) file_bytes: u64,
    pub(crate) page_bytes: u64,
}

fn corrupt(path: &Path, page: Option<u64>, reason: String) -> Error {
    Error::CorruptFile {
        path: path.to_path_buf(),
        page,
        reason,
    }
}

fn read_at(file: &File, path: &Path, buffer: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(buffer, offset)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads both meta pages with plain reads and picks the one LMDB would use (the higher
/// transaction id; `mdb_env_pick_meta`), refusing the file where LMDB would refuse it or
/// where the chosen page would lead LMDB outside the file.
pub(crate) fn read_meta(file: &File, path: &Path, os_page_bytes: u32) -> Result<MetaChoice> {
    let file_bytes = file
        .metadata()
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let metas = read_meta_pages(file, path, file_bytes, os_page_bytes)?;
    let slot = u64::from(metas[0].txnid < metas[1].txnid);
    let meta = metas[slot as usize];
    if let Some(reason) = meta.damage(slot, os_page_bytes) {
        return Err(corrupt(
            path,
            Some(slot),
            format!(
                "meta page {slot}, the newer one (transaction {}), is damaged: {reason}",
                meta.txnid
            ),
        ));
    }
    let other = 1 - slot;
    if let Some(reason) = metas[other as usize].damage(other, os_page_bytes) {
        // LMDB never follows the older meta page (its next commit overwrites it).
        tracing::warn!(path = %path.display(), page = other, reason, "the older LMDB meta page is damaged");
    }
    Ok(MetaChoice {
        slot,
        meta,
        file_bytes,
        page_bytes: u64::from(os_page_bytes),
    })
}

/// Reads the two meta pages and refuses them where LMDB's `mdb_env_read_header` would:
/// a file too short for them, a page that is no meta page, or a wrong magic or version.
fn read_meta_pages(
    file: &File,
    path: &Path,
    file_bytes: u64,
    os_page_bytes: u32,
) -> Result<[Meta; 2]> {
    let page_bytes = u64::from(os_page_bytes);
    let truncated = |needed_bytes: u64| Error::Truncated {
        path: path.to_path_buf(),
        file_bytes,
        needed_bytes,
    };
    if file_bytes < META_READ_BYTES as u64 {
        return Err(truncated(page_bytes * META_PAGES));
    }
    let mut buffer = [0_u8; META_READ_BYTES];
    read_at(file, path, &mut buffer, 0)?;
    let first = Meta::parse(&buffer);
    // LMDB finds the second meta page one page size further on, the size the first one
    // states: a wrong one there misleads it whichever page is newer.
    if first.lmdb_refusal().is_none() && first.page_bytes() != os_page_bytes {
        return Err(corrupt(
            path,
            Some(0),
            format!(
                "meta page 0 states a page size of {} bytes, not this system's {os_page_bytes}",
                first.page_bytes()
            ),
        ));
    }
    if file_bytes < page_bytes * META_PAGES {
        return Err(truncated(page_bytes * META_PAGES));
    }
    read_at(file, path, &mut buffer, page_bytes)?;
    let second = Meta::parse(&buffer);
    match (first.lmdb_refusal(), second.lmdb_refusal()) {
        (None, None) => Ok([first, second]),
        (Some(first), Some(second)) => Err(corrupt(
            path,
            None,
            format!("both meta pages are damaged: page 0: {first}; page 1: {second}"),
        )),
        (Some(reason), None) | (None, Some(reason)) => {
            let slot = u64::from(first.lmdb_refusal().is_none());
            Err(corrupt(
                path,
                Some(slot),
                format!(
                    "meta page {slot} is damaged (LMDB refuses a file with one such page): {reason}"
                ),
            ))
        }
    }
}

/// A fixed-size set of page numbers.
struct PageSet {
    words: Vec<u64>,
}

impl PageSet {
    fn new(pages: u64) -> PageSet {
        PageSet {
            words: vec![0; pages.div_ceil(64) as usize],
        }
    }

    /// Adds `page`; `false` if it was there already.
    fn insert(&mut self, page: u64) -> bool {
        let (word, bit) = ((page / 64) as usize, page % 64);
        let was = self.words[word] & (1 << bit) != 0;
        self.words[word] |= 1 << bit;
        !was
    }

    fn contains(&self, page: u64) -> bool {
        let (word, bit) = ((page / 64) as usize, page % 64);
        self.words.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }
}

/// A value as a visitor sees it: in the page, or on an overflow run the walker checked.
pub(crate) enum Value<'p> {
    Inline(&'p [u8]),
    Overflow { pgno: u64, bytes: u64 },
}

/// The state of one tree's walk.
struct TreeWalk<'a> {
    name: &'a TreeName,
    depth: u16,
    order: KeyOrder,
    /// Leaf node flags this tree may have besides none.
    leaf_flags: u16,
    counts: TreeCounts,
}

type Visit<'v> = dyn FnMut(&mut Walker<'_>, &[u8], u16, Value<'_>) -> Result<()> + 'v;

/// Reads pages of one data file and remembers which it has reached.
pub(crate) struct Walker<'f> {
    file: &'f File,
    path: &'f Path,
    choice: MetaChoice,
    /// Pages wholly inside the file.
    file_pages: u64,
    reached: PageSet,
    /// Page numbers named by the free-page database's lists.
    free_listed: Vec<u64>,
}

/// What the structural walk found.
#[derive(Debug, Clone)]
pub(crate) struct Structure {
    pub(crate) choice: MetaChoice,
    /// The named databases, by name, with their counts.
    pub(crate) tables: Vec<(String, TreeCounts)>,
    pub(crate) pages_in_use: u64,
    pub(crate) pages_free: u64,
    pub(crate) pages_unaccounted: u64,
}

impl<'f> Walker<'f> {
    pub(crate) fn new(file: &'f File, path: &'f Path, choice: MetaChoice) -> Walker<'f> {
        let file_pages = choice.file_bytes / choice.page_bytes;
        let tracked = file_pages.min(choice.meta.last_pgno.saturating_add(1));
        let mut reached = PageSet::new(tracked);
        for meta in 0..META_PAGES.min(tracked) {
            reached.insert(meta);
        }
        Walker {
            file,
            path,
            choice,
            file_pages,
            reached,
            free_listed: Vec::new(),
        }
    }

    fn page_error(&self, page: u64, name: &TreeName, reason: impl fmt::Display) -> Error {
        corrupt(self.path, Some(page), format!("{name}: {reason}"))
    }

    /// Marks `pages` pages from `pgno` as reached and reads the first one.
    fn claim(&mut self, pgno: u64, pages: u64, name: &TreeName) -> Result<Vec<u8>> {
        let last = self.choice.meta.last_pgno;
        let end = pgno.saturating_add(pages);
        if pgno < META_PAGES || end.saturating_sub(1) > last {
            return Err(self.page_error(
                pgno,
                name,
                format!(
                    "pages {pgno}..{end} are not within pages {META_PAGES}..={last} (a meta page or past the last page)"
                ),
            ));
        }
        if end > self.file_pages {
            return Err(Error::Truncated {
                path: self.path.to_path_buf(),
                file_bytes: self.choice.file_bytes,
                needed_bytes: end.saturating_mul(self.choice.page_bytes),
            });
        }
        for page in pgno..end {
            if !self.reached.insert(page) {
                return Err(self.page_error(page, name, "the page is reached twice"));
            }
        }
        let mut page = vec![0_u8; self.choice.page_bytes as usize];
        read_at(
            self.file,
            self.path,
            &mut page,
            pgno * self.choice.page_bytes,
        )?;
        let header = PageHeader::parse(&page);
        if header.pgno != pgno {
            return Err(self.page_error(
                pgno,
                name,
                format!("the page's header says it is page {}", header.pgno),
            ));
        }
        Ok(page)
    }

    /// Reads the content of an overflow value the walk already checked.
    pub(crate) fn read_overflow(&self, pgno: u64, bytes: u64) -> Result<Vec<u8>> {
        let mut value = vec![0_u8; bytes as usize];
        read_at(
            self.file,
            self.path,
            &mut value,
            pgno * self.choice.page_bytes + PAGE_HEADER_BYTES as u64,
        )?;
        Ok(value)
    }

    /// Walks one tree from its database record.
    fn walk_tree(
        &mut self,
        name: &TreeName,
        db: &DbRecord,
        order: KeyOrder,
        leaf_flags: u16,
        visit: &mut Visit<'_>,
    ) -> Result<TreeCounts> {
        if let Some(damage) = layout::root_damage(db, self.choice.meta.last_pgno) {
            return Err(corrupt(self.path, None, format!("{name}: {damage}")));
        }
        let mut tree = TreeWalk {
            name,
            depth: db.depth,
            order,
            leaf_flags,
            counts: TreeCounts::default(),
        };
        if db.root != PAGE_INVALID {
            self.walk_page(&mut tree, db.root, 1, None, None, visit)?;
        }
        let expected = TreeCounts {
            branch_pages: db.branch_pages,
            leaf_pages: db.leaf_pages,
            overflow_pages: db.overflow_pages,
            entries: db.entries,
        };
        if tree.counts != expected {
            return Err(corrupt(
                self.path,
                None,
                format!(
                    "{name}: its record counts {expected:?}, but its tree holds {:?}",
                    tree.counts
                ),
            ));
        }
        Ok(tree.counts)
    }

    /// Checks one page (and, for a branch, its subtree). Keys of this page must lie in
    /// `[low, high)`.
    fn walk_page(
        &mut self,
        tree: &mut TreeWalk<'_>,
        pgno: u64,
        level: u16,
        low: Option<&[u8]>,
        high: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        let page = self.claim(pgno, 1, tree.name)?;
        let branch = level < tree.depth;
        let fail = |this: &Self, reason: String| this.page_error(pgno, tree.name, reason);
        let keys = tree_page_keys(&page, branch, level, tree.depth)
            .map_err(|reason| fail(self, reason))?;
        if branch {
            tree.counts.branch_pages += 1;
        } else {
            tree.counts.leaf_pages += 1;
        }
        let mut nodes = Vec::with_capacity(keys);
        for index in 0..keys {
            let node = layout::node(&page, index, branch).map_err(|reason| fail(self, reason))?;
            nodes.push(node);
        }
        // A branch's first key is never compared (LMDB's search starts at the second).
        for index in usize::from(branch)..keys {
            let previous = (index > usize::from(branch)).then(|| nodes[index - 1].key);
            if let Some(reason) =
                key_out_of_order(tree.order, nodes[index].key, index, previous, low, high)
            {
                return Err(fail(self, reason));
            }
        }
        if branch {
            for (index, node) in nodes.iter().enumerate() {
                let child_low = if index == 0 { low } else { Some(node.key) };
                let child_high = nodes.get(index + 1).map(|next| next.key).or(high);
                self.walk_page(tree, node.child, level + 1, child_low, child_high, visit)?;
            }
            return Ok(());
        }
        for (index, node) in nodes.iter().enumerate() {
            self.leaf_node(tree, pgno, index, node, visit)?;
        }
        Ok(())
    }

    fn leaf_node(
        &mut self,
        tree: &mut TreeWalk<'_>,
        pgno: u64,
        index: usize,
        node: &Node<'_>,
        visit: &mut Visit<'_>,
    ) -> Result<()> {
        let name = tree.name;
        if node.flags & !tree.leaf_flags != 0 || node.flags & F_DUPDATA != 0 {
            return Err(self.page_error(
                pgno,
                name,
                format!(
                    "node {index} has flags {:#06x}, not allowed in this tree",
                    node.flags
                ),
            ));
        }
        tree.counts.entries += 1;
        let value = if node.flags & F_BIGDATA != 0 {
            let first = layout::u64_at(node.data, 0);
            let bytes = u64::from(node.data_bytes);
            let needed = layout::overflow_pages_for(bytes, self.choice.page_bytes);
            let head = self.claim_overflow_head(first, name)?;
            let pages = u64::from(PageHeader::parse(&head).overflow_pages);
            if pages < needed {
                return Err(self.page_error(
                    first,
                    name,
                    format!("the overflow run has {pages} pages; its value of {bytes} bytes needs {needed}"),
                ));
            }
            if pages > 1 {
                self.claim_rest(first + 1, pages - 1, name)?;
            }
            tree.counts.overflow_pages += pages;
            Value::Overflow { pgno: first, bytes }
        } else {
            Value::Inline(node.data)
        };
        visit(self, node.key, node.flags, value)
    }

    /// Claims and checks the first page of an overflow run.
    fn claim_overflow_head(&mut self, pgno: u64, name: &TreeName) -> Result<Vec<u8>> {
        let head = self.claim(pgno, 1, name)?;
        let header = PageHeader::parse(&head);
        if header.flags != P_OVERFLOW {
            return Err(self.page_error(
                pgno,
                name,
                format!(
                    "a value points here, but the page has flags {:#06x}, not an overflow page's",
                    header.flags
                ),
            ));
        }
        Ok(head)
    }

    /// Claims the pages of an overflow run after its first (they have no header).
    fn claim_rest(&mut self, pgno: u64, pages: u64, name: &TreeName) -> Result<()> {
        let last = self.choice.meta.last_pgno;
        let end = pgno.saturating_add(pages);
        if end.saturating_sub(1) > last {
            return Err(self.page_error(
                pgno - 1,
                name,
                format!(
                    "the overflow run ends at page {}, past the last page {last}",
                    end - 1
                ),
            ));
        }
        if end > self.file_pages {
            return Err(Error::Truncated {
                path: self.path.to_path_buf(),
                file_bytes: self.choice.file_bytes,
                needed_bytes: end.saturating_mul(self.choice.page_bytes),
            });
        }
        for page in pgno..end {
            if !self.reached.insert(page) {
                return Err(self.page_error(page, name, "the page is reached twice"));
            }
        }
        Ok(())
    }

    /// Walks the free-page database and keeps the page numbers its lists name.
    pub(crate) fn walk_free(&mut self) -> Result<TreeCounts> {
        let db = self.choice.meta.free;
        let mut visit = |walker: &mut Walker<'_>, key: &[u8], _flags: u16, value: Value<'_>| {
            let owned;
            let list: &[u8] = match value {
                Value::Inline(bytes) => bytes,
                Value::Overflow { pgno, bytes } => {
                    owned = walker.read_overflow(pgno, bytes)?;
                    &owned
                }
            };
            walker.free_list(key, list)
        };
        self.walk_tree(
            &TreeName::Free,
            &db,
            KeyOrder::Integer,
            F_BIGDATA,
            &mut visit,
        )
    }

    /// One free-list record: `[count, page...]` (an `MDB_IDL`), possibly followed by slack.
    fn free_list(&mut self, key: &[u8], list: &[u8]) -> Result<()> {
        let txnid = if key.len() == 8 {
            layout::u64_at(key, 0)
        } else {
            0
        };
        let damaged = |reason: String| {
            corrupt(
                self.path,
                None,
                format!(
                    "{}: the list of transaction {txnid}: {reason}",
                    TreeName::Free
                ),
            )
        };
        if list.len() < 8 || !list.len().is_multiple_of(8) {
            return Err(damaged(format!(
                "it is {} bytes, not a list of page numbers",
                list.len()
            )));
        }
        let count = layout::u64_at(list, 0);
        let room = (list.len() / 8 - 1) as u64;
        if count > room {
            return Err(damaged(format!(
                "it says {count} pages but has room for {room}"
            )));
        }
        for index in 1..=count as usize {
            self.free_listed.push(layout::u64_at(list, index * 8));
        }
        Ok(())
    }

    /// Walks LMDB's main database and every named database it lists.
    pub(crate) fn walk_main(&mut self) -> Result<(TreeCounts, Vec<(String, TreeCounts)>)> {
        let db = self.choice.meta.main;
        let order = KeyOrder::for_flags(db.flags)
            .map_err(|reason| corrupt(self.path, None, format!("{}: {reason}", TreeName::Main)))?;
        let mut named: Vec<(String, DbRecord)> = Vec::new();
        let mut visit = |walker: &mut Walker<'_>, key: &[u8], flags: u16, value: Value<'_>| {
            if flags & F_SUBDATA == 0 {
                return Ok(());
            }
            let name = key.escape_ascii().to_string();
            match value {
                Value::Inline(bytes)
                    if flags == F_SUBDATA && bytes.len() == layout::DB_RECORD_BYTES =>
                {
                    named.push((name, DbRecord::parse(bytes)));
                    Ok(())
                }
                _ => Err(corrupt(
                    walker.path,
                    None,
                    format!(
                        "{}: the record of table {name} is not a database record",
                        TreeName::Main
                    ),
                )),
            }
        };
        let main = self.walk_tree(
            &TreeName::Main,
            &db,
            order,
            F_BIGDATA | F_SUBDATA,
            &mut visit,
        )?;
        let mut tables = Vec::with_capacity(named.len());
        for (name, db) in named {
            let tree = TreeName::Named(name.clone());
            let order = KeyOrder::for_flags(db.flags)
                .map_err(|reason| corrupt(self.path, None, format!("{tree}: {reason}")))?;
            let mut ignore = |_: &mut Walker<'_>, _: &[u8], _: u16, _: Value<'_>| Ok(());
            let counts = self.walk_tree(&tree, &db, order, F_BIGDATA, &mut ignore)?;
            tables.push((name, counts));
        }
        Ok((main, tables))
    }

    /// Checks the free lists against the walk: each listed page is a page of the file's
    /// range, listed once, and not in use; and every page past the end of the file
    /// (which LMDB may leave unwritten when it freed it in the transaction that made it)
    /// is listed free.
    pub(crate) fn check_free_lists(&mut self, trees_walked: bool) -> Result<u64> {
        let last = self.choice.meta.last_pgno;
        let mut listed = std::mem::take(&mut self.free_listed);
        listed.sort_unstable();
        for pair in listed.windows(2) {
            if pair[0] == pair[1] {
                return Err(self.page_error(
                    pair[0],
                    &TreeName::Free,
                    "the page is listed free twice",
                ));
            }
        }
        for &page in &listed {
            if page < META_PAGES || page > last {
                return Err(self.page_error(
                    page,
                    &TreeName::Free,
                    format!("a free list names page {page}, outside pages {META_PAGES}..={last}"),
                ));
            }
            if trees_walked && self.reached.contains(page) {
                return Err(self.page_error(
                    page,
                    &TreeName::Free,
                    "the page is in use and also listed free",
                ));
            }
        }
        let missing_pages = (last + 1).saturating_sub(self.file_pages);
        let listed_past_end = listed
            .iter()
            .filter(|&&page| page >= self.file_pages)
            .count() as u64;
        if listed_past_end < missing_pages {
            return Err(Error::Truncated {
                path: self.path.to_path_buf(),
                file_bytes: self.choice.file_bytes,
                needed_bytes: (last + 1).saturating_mul(self.choice.page_bytes),
            });
        }
        Ok(listed.len() as u64)
    }

    /// The number of pages (meta pages included) the walk reached.
    fn reached_pages(&self) -> u64 {
        self.reached
            .words
            .iter()
            .map(|word| u64::from(word.count_ones()))
            .sum()
    }
}

/// Checks the header of a branch or leaf page at `level` of a tree of `depth`; returns
/// its number of nodes.
fn tree_page_keys(page: &[u8], branch: bool, level: u16, depth: u16) -> Result<usize, String> {
    let header = PageHeader::parse(page);
    let expected_flags = if branch { P_BRANCH } else { P_LEAF };
    if header.flags != expected_flags {
        return Err(format!(
            "the page has flags {:#06x}, but at level {level} of {depth} it must be a {} page",
            header.flags,
            if branch { "branch" } else { "leaf" }
        ));
    }
    let (lower, upper) = (usize::from(header.lower), usize::from(header.upper));
    if lower < PAGE_HEADER_BYTES
        || !(lower - PAGE_HEADER_BYTES).is_multiple_of(2)
        || lower > upper
        || upper > page.len()
    {
        return Err(format!(
            "its free-space bounds {lower}..{upper} are not within {PAGE_HEADER_BYTES}..={}",
            page.len()
        ));
    }
    match header.keys() {
        0 => Err("the page has no nodes".into()),
        keys => Ok(keys),
    }
}

/// Why a key does not belong where it is: keys strictly increase within a page and lie
/// in `[low, high)`, the bounds the parent's separators give.
fn key_out_of_order(
    order: KeyOrder,
    key: &[u8],
    index: usize,
    previous: Option<&[u8]>,
    low: Option<&[u8]>,
    high: Option<&[u8]>,
) -> Option<String> {
    use std::cmp::Ordering::Less;
    if order == KeyOrder::Integer && key.len() != 8 {
        return Some(format!(
            "node {index} has a key of {} bytes in an integer-keyed tree",
            key.len()
        ));
    }
    if previous.is_some_and(|previous| order.compare(previous, key) != Less) {
        return Some(format!(
            "node {index}'s key is not after node {}'s",
            index - 1
        ));
    }
    if low.is_some_and(|low| order.compare(key, low) == Less) {
        return Some(format!(
            "node {index}'s key is before its parent's separator"
        ));
    }
    if high.is_some_and(|high| order.compare(key, high) != Less) {
        return Some(format!(
            "node {index}'s key is not before the next separator of its parent"
        ));
    }
    None
}

/// The check run before LMDB maps the file on every open: the meta pages, and, when
/// the file is shorter than the last page, that the missing pages are free ones.
pub(crate) fn check_length(file: &File, path: &Path, choice: MetaChoice) -> Result<()> {
    let meta = choice.meta;
    let needed_bytes = (meta.last_pgno + 1).saturating_mul(choice.page_bytes);
    let file_pages = choice.file_bytes / choice.page_bytes;
    for root in [meta.free.root, meta.main.root] {
        if root != PAGE_INVALID && root >= file_pages {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                file_bytes: choice.file_bytes,
                needed_bytes,
            });
        }
    }
    if choice.file_bytes >= needed_bytes {
        return Ok(());
    }
    let mut walker = Walker::new(file, path, choice);
    walker.walk_free()?;
    walker.check_free_lists(false)?;
    Ok(())
}

/// The full structural walk.
pub(crate) fn walk(file: &File, path: &Path, choice: MetaChoice) -> Result<Structure> {
    let mut walker = Walker::new(file, path, choice);
    let free = walker.walk_free()?;
    let (main, tables) = walker.walk_main()?;
    let pages_free = walker.check_free_lists(true)?;
    let pages_in_use =
        free.pages() + main.pages() + tables.iter().map(|(_, c)| c.pages()).sum::<u64>();
    let reached = walker.reached_pages();
    let total = choice.meta.last_pgno + 1;
    Ok(Structure {
        choice,
        tables,
        pages_in_use,
        pages_free,
        pages_unaccounted: total.saturating_sub(reached + pages_free),
    })
}
