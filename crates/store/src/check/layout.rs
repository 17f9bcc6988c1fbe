//! LMDB's on-disk layout (lmdb-master-sys 0.2.6, LMDB 0.9.70, `mdb.c`), parsed from
//! plain bytes so that a damaged file is judged without LMDB mapping it.
//!
//! Only the 64-bit layout exists here: `pgno_t`, `txnid_t` and `mdb_size_t` are `size_t`
//! (8 bytes), every field is in the host's byte order, and `MDB_DEVEL` is off (so
//! `PAGEBASE` is 0 and node offsets count from the start of the page).

use std::cmp::Ordering;

// The offsets below are those of a 64-bit build; a 32-bit one lays the file out otherwise.
const _: () = assert!(
    usize::BITS == 64,
    "the LMDB file checker knows only the 64-bit layout"
);

/// `MDB_MAGIC`.
pub(crate) const MAGIC: u32 = 0xBEEF_C0DE;
/// `MDB_DATA_VERSION` (with `MDB_DEVEL` off).
pub(crate) const DATA_VERSION: u32 = 1;
/// `P_INVALID`: the root of an empty tree.
pub(crate) const PAGE_INVALID: u64 = u64::MAX;
/// `NUM_METAS`: pages 0 and 1 are the meta pages.
pub(crate) const META_PAGES: u64 = 2;
/// `PAGEHDRSZ`: `mp_pgno` (8), `mp_pad` (2), `mp_flags` (2), `mp_lower` and `mp_upper` (2
/// each, or `mp_pages`, 4, on an overflow page).
pub(crate) const PAGE_HEADER_BYTES: usize = 16;
/// `NODESIZE`: `mn_lo`, `mn_hi`, `mn_flags`, `mn_ksize` (2 bytes each).
pub(crate) const NODE_HEADER_BYTES: usize = 8;
/// `sizeof(MDB_db)`: `md_pad` (4), `md_flags` (2), `md_depth` (2), then five 8-byte
/// fields: branch, leaf and overflow page counts, entries, root.
pub(crate) const DB_RECORD_BYTES: usize = 48;
/// `sizeof(MDB_metabuf)`: the page header and `MDB_meta` (magic 4, version 4, address 8,
/// map size 8, the free and main `MDB_db`, last page 8, txnid 8); what LMDB reads of
/// each meta page before it maps the file.
pub(crate) const META_READ_BYTES: usize = PAGE_HEADER_BYTES + 24 + 2 * DB_RECORD_BYTES + 16;
/// `MDB_MAXKEYSIZE` (511 when `MDB_DEVEL` is off and the `longer-keys` feature is not
/// enabled, as for heed 0.23's default build).
pub(crate) const KEY_BYTES_MAX: usize = 511;
/// `CURSOR_STACK`: LMDB cannot descend deeper than this.
pub(crate) const TREE_DEPTH_MAX: u16 = 32;

const _: () = assert!(META_READ_BYTES == 152);

/// Page flags (`P_*`).
pub(crate) const P_BRANCH: u16 = 0x01;
pub(crate) const P_LEAF: u16 = 0x02;
pub(crate) const P_OVERFLOW: u16 = 0x04;
pub(crate) const P_META: u16 = 0x08;
/// Node flags (`F_*`).
pub(crate) const F_BIGDATA: u16 = 0x01;
pub(crate) const F_SUBDATA: u16 = 0x02;
pub(crate) const F_DUPDATA: u16 = 0x04;
/// Database flags (`MDB_*` of `mdb_dbi_open`) that change the key order or the layout.
pub(crate) const MDB_REVERSEKEY: u16 = 0x02;
pub(crate) const MDB_DUPSORT: u16 = 0x04;
pub(crate) const MDB_INTEGERKEY: u16 = 0x08;

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    let mut raw = [0; 2];
    raw.copy_from_slice(&bytes[at..at + 2]);
    u16::from_ne_bytes(raw)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_ne_bytes(raw)
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_ne_bytes(raw)
}

/// The header of a page (`MDB_page` without its pointers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageHeader {
    pub(crate) pgno: u64,
    pub(crate) flags: u16,
    pub(crate) lower: u16,
    pub(crate) upper: u16,
    /// `mp_pages`, meaningful on overflow pages only (it overlays `lower` and `upper`).
    pub(crate) overflow_pages: u32,
}

impl PageHeader {
    /// Parses the first `PAGE_HEADER_BYTES` of `page`.
    pub(crate) fn parse(page: &[u8]) -> PageHeader {
        PageHeader {
            pgno: u64_at(page, 0),
            flags: u16_at(page, 10),
            lower: u16_at(page, 12),
            upper: u16_at(page, 14),
            overflow_pages: u32_at(page, 12),
        }
    }

    /// `NUMKEYS`: how many node pointers follow the header.
    pub(crate) fn keys(&self) -> usize {
        usize::from(self.lower).saturating_sub(PAGE_HEADER_BYTES) / 2
    }
}

/// One database's record (`MDB_db`): in the meta page for the free and main databases,
/// in the main database's leaves for named ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DbRecord {
    /// `md_pad`: the page size, in the free database's record of a meta page.
    pub(crate) pad: u32,
    pub(crate) flags: u16,
    pub(crate) depth: u16,
    pub(crate) branch_pages: u64,
    pub(crate) leaf_pages: u64,
    pub(crate) overflow_pages: u64,
    pub(crate) entries: u64,
    pub(crate) root: u64,
}

impl DbRecord {
    /// Parses `DB_RECORD_BYTES` bytes.
    pub(crate) fn parse(bytes: &[u8]) -> DbRecord {
        DbRecord {
            pad: u32_at(bytes, 0),
            flags: u16_at(bytes, 4),
            depth: u16_at(bytes, 6),
            branch_pages: u64_at(bytes, 8),
            leaf_pages: u64_at(bytes, 16),
            overflow_pages: u64_at(bytes, 24),
            entries: u64_at(bytes, 32),
            root: u64_at(bytes, 40),
        }
    }
}

/// The content of one meta page (`MDB_meta`) and its page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) header: PageHeader,
    pub(crate) magic: u32,
    pub(crate) version: u32,
    pub(crate) map_size_bytes: u64,
    pub(crate) free: DbRecord,
    pub(crate) main: DbRecord,
    pub(crate) last_pgno: u64,
    pub(crate) txnid: u64,
}

impl Meta {
    /// Parses the first `META_READ_BYTES` of a meta page.
    pub(crate) fn parse(page: &[u8]) -> Meta {
        let meta = PAGE_HEADER_BYTES;
        Meta {
            header: PageHeader::parse(page),
            magic: u32_at(page, meta),
            version: u32_at(page, meta + 4),
            map_size_bytes: u64_at(page, meta + 16),
            free: DbRecord::parse(&page[meta + 24..]),
            main: DbRecord::parse(&page[meta + 24 + DB_RECORD_BYTES..]),
            last_pgno: u64_at(page, meta + 24 + 2 * DB_RECORD_BYTES),
            txnid: u64_at(page, meta + 32 + 2 * DB_RECORD_BYTES),
        }
    }

    /// `mm_psize`, kept in the free database's `md_pad`.
    pub(crate) fn page_bytes(&self) -> u32 {
        self.free.pad
    }

    /// What LMDB itself checks before it uses a meta page (`mdb_env_read_header`): the
    /// meta flag, the magic and the version. `None` when it would accept the page.
    pub(crate) fn lmdb_refusal(&self) -> Option<String> {
        if self.header.flags & P_META == 0 {
            Some(format!(
                "its header has flags {:#06x}, not a meta page's",
                self.header.flags
            ))
        } else if self.magic != MAGIC {
            Some(format!(
                "its magic is {:#010x}, not LMDB's {MAGIC:#010x}",
                self.magic
            ))
        } else if self.version != DATA_VERSION {
            Some(format!(
                "its data version is {}, not {DATA_VERSION}",
                self.version
            ))
        } else {
            None
        }
    }

    /// Everything else that must hold before LMDB may follow this meta page's pointers:
    /// its place, its page size, its last page and both roots. `None` when it holds.
    pub(crate) fn damage(&self, slot: u64, os_page_bytes: u32) -> Option<String> {
        if let Some(refusal) = self.lmdb_refusal() {
            return Some(refusal);
        }
        if self.header.pgno != slot {
            return Some(format!(
                "its header says page {}, but it is page {slot}",
                self.header.pgno
            ));
        }
        if self.page_bytes() != os_page_bytes {
            return Some(format!(
                "its page size is {} bytes, not this system's {os_page_bytes}",
                self.page_bytes()
            ));
        }
        // LMDB's writer puts the meta of transaction N in page N % 2 (`mdb_env_write_meta`);
        // a fresh environment has transaction 0 in both.
        if self.txnid % 2 != slot && self.txnid != 0 {
            return Some(format!(
                "it holds transaction {}, which LMDB never writes to meta page {slot}",
                self.txnid
            ));
        }
        if self.last_pgno < META_PAGES - 1 {
            return Some(format!("its last page is {}", self.last_pgno));
        }
        // LMDB never commits past its map, and records the map size with each commit.
        let used_bytes = (self.last_pgno + 1).saturating_mul(u64::from(self.page_bytes()));
        if used_bytes > self.map_size_bytes {
            return Some(format!(
                "its last page {} lies past its own map size of {} bytes",
                self.last_pgno, self.map_size_bytes
            ));
        }
        for (name, db) in [("free", &self.free), ("main", &self.main)] {
            if let Some(damage) = root_damage(db, self.last_pgno) {
                return Some(format!("the {name} database's {damage}"));
            }
        }
        None
    }
}

/// Whether a database record's root and depth agree with each other and the last page.
pub(crate) fn root_damage(db: &DbRecord, last_pgno: u64) -> Option<String> {
    if db.root == PAGE_INVALID {
        return (db.depth != 0 || db.entries != 0).then(|| {
            format!(
                "tree is empty but has depth {} and {} entries",
                db.depth, db.entries
            )
        });
    }
    if db.root < META_PAGES || db.root > last_pgno {
        return Some(format!(
            "root page {} is outside pages {META_PAGES}..={last_pgno}",
            db.root
        ));
    }
    if db.depth == 0 || db.depth > TREE_DEPTH_MAX {
        return Some(format!(
            "tree has depth {} (1 to {TREE_DEPTH_MAX})",
            db.depth
        ));
    }
    None
}

/// `OVPAGES`: how many pages an overflow value of `bytes` needs.
pub(crate) fn overflow_pages_for(bytes: u64, page_bytes: u64) -> u64 {
    (PAGE_HEADER_BYTES as u64 - 1 + bytes) / page_bytes + 1
}

/// A database's key order, as LMDB compares keys for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyOrder {
    /// `mdb_cmp_memn`: bytes, then length (the default, and every table of this store).
    Bytes,
    /// `mdb_cmp_long` on 8-byte keys (the free database).
    Integer,
}

impl KeyOrder {
    /// The order for a database with these flags, or why it is not one this store makes.
    pub(crate) fn for_flags(flags: u16) -> Result<KeyOrder, String> {
        if flags & MDB_DUPSORT != 0 {
            Err(format!(
                "has flags {flags:#06x}: duplicate keys (MDB_DUPSORT), which this store never creates"
            ))
        } else if flags & MDB_REVERSEKEY != 0 {
            Err(format!(
                "has flags {flags:#06x}: reversed keys (MDB_REVERSEKEY), which this store never creates"
            ))
        } else if flags & MDB_INTEGERKEY != 0 {
            Ok(KeyOrder::Integer)
        } else {
            Ok(KeyOrder::Bytes)
        }
    }

    /// Compares two keys of this database; integer keys must be 8 bytes (checked before).
    pub(crate) fn compare(self, a: &[u8], b: &[u8]) -> Ordering {
        match self {
            KeyOrder::Bytes => a.cmp(b),
            KeyOrder::Integer if a.len() == 8 && b.len() == 8 => u64_at(a, 0).cmp(&u64_at(b, 0)),
            KeyOrder::Integer => a.len().cmp(&b.len()),
        }
    }
}

/// One node of a branch or leaf page, bounds-checked against its page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node<'p> {
    pub(crate) flags: u16,
    pub(crate) key: &'p [u8],
    /// Leaf nodes: the data size (of the value itself, even when it is on overflow pages).
    pub(crate) data_bytes: u32,
    /// Leaf nodes: the bytes that follow the key in the page (the value, or the 8-byte
    /// overflow page number when `F_BIGDATA`); empty on branch nodes.
    pub(crate) data: &'p [u8],
    /// Branch nodes: the child page.
    pub(crate) child: u64,
}

/// Parses node `index` of a branch or leaf page whose header was checked.
pub(crate) fn node(page: &[u8], index: usize, branch: bool) -> Result<Node<'_>, String> {
    let pointer_at = PAGE_HEADER_BYTES + 2 * index;
    let offset = usize::from(u16_at(page, pointer_at));
    let header = PageHeader::parse(page);
    if offset < usize::from(header.upper) || !offset.is_multiple_of(2) {
        return Err(format!(
            "node {index} is at offset {offset}, outside the node area {}..{} or odd",
            header.upper,
            page.len()
        ));
    }
    if offset + NODE_HEADER_BYTES > page.len() {
        return Err(format!(
            "node {index}'s header at offset {offset} runs past the page"
        ));
    }
    let lo = u64::from(u16_at(page, offset));
    let hi = u64::from(u16_at(page, offset + 2));
    let flags = u16_at(page, offset + 4);
    let key_bytes = usize::from(u16_at(page, offset + 6));
    if key_bytes > KEY_BYTES_MAX {
        return Err(format!(
            "node {index} has a key of {key_bytes} bytes, over LMDB's {KEY_BYTES_MAX}"
        ));
    }
    let key_at = offset + NODE_HEADER_BYTES;
    if key_at + key_bytes > page.len() {
        return Err(format!("node {index}'s key runs past the page"));
    }
    let key = &page[key_at..key_at + key_bytes];
    if branch {
        return Ok(Node {
            flags: 0,
            key,
            data_bytes: 0,
            data: &[],
            // NODEPGNO: on 64-bit builds mn_flags holds bits 32..47 of a branch's child.
            child: lo | (hi << 16) | (u64::from(flags) << 32),
        });
    }
    let data_bytes = (lo | (hi << 16)) as u32;
    let in_page = if flags & F_BIGDATA != 0 {
        8
    } else {
        data_bytes as usize
    };
    let data_at = key_at + key_bytes;
    if data_at + in_page > page.len() {
        return Err(format!(
            "node {index}'s value of {in_page} bytes runs past the page"
        ));
    }
    Ok(Node {
        flags,
        key,
        data_bytes,
        data: &page[data_at..data_at + in_page],
        child: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field offsets match the sizes LMDB's structs have on a 64-bit build.
    #[test]
    fn offsets_match_lmdb_structs() {
        let mut page = vec![0_u8; META_READ_BYTES];
        page[0..8].copy_from_slice(&1_u64.to_ne_bytes());
        page[10..12].copy_from_slice(&P_META.to_ne_bytes());
        page[16..20].copy_from_slice(&MAGIC.to_ne_bytes());
        page[20..24].copy_from_slice(&DATA_VERSION.to_ne_bytes());
        page[32..40].copy_from_slice(&(1_u64 << 20).to_ne_bytes());
        page[40..44].copy_from_slice(&4096_u32.to_ne_bytes());
        page[80..88].copy_from_slice(&PAGE_INVALID.to_ne_bytes());
        page[88 + 6..88 + 8].copy_from_slice(&1_u16.to_ne_bytes());
        page[128..136].copy_from_slice(&5_u64.to_ne_bytes());
        page[136..144].copy_from_slice(&9_u64.to_ne_bytes());
        page[144..152].copy_from_slice(&3_u64.to_ne_bytes());
        let meta = Meta::parse(&page);
        assert_eq!(meta.header.pgno, 1);
        assert_eq!(meta.page_bytes(), 4096);
        assert_eq!(meta.map_size_bytes, 1 << 20);
        assert_eq!(meta.free.root, PAGE_INVALID);
        assert_eq!(meta.main.depth, 1);
        assert_eq!(meta.main.root, 5);
        assert_eq!(meta.last_pgno, 9);
        assert_eq!(meta.txnid, 3);
        assert_eq!(meta.damage(1, 4096), None);
        assert!(
            meta.damage(0, 4096).is_some(),
            "page number and slot differ"
        );
        assert!(meta.damage(1, 16384).is_some(), "page size differs");
    }

    /// Overflow runs are sized as LMDB's OVPAGES sizes them.
    #[test]
    fn overflow_page_counts() {
        assert_eq!(overflow_pages_for(1, 4096), 1);
        assert_eq!(overflow_pages_for(4096 - 16, 4096), 1);
        assert_eq!(overflow_pages_for(4096 - 15, 4096), 2);
    }
}
