//! Tiles and entry bundles as c2sp.org/tlog-tiles names them: their
//! paths (one canonical spelling each, so caches agree), whether one lies
//! within a tree, and an entry bundle's bytes. What the tiles hold is
//! [`tiles`](super::tiles)' business.

use super::merkle::TILE_HEIGHT;

/// Hashes in a full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

/// A tile: `width` hashes (1..=256) of tile level `level` from `index * 256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileId {
    /// Tile level (0: leaf hashes).
    pub level: u8,
    /// Tile index within its level.
    pub index: u64,
    /// Hashes in it; 256 for a full tile.
    pub width: u64,
}

/// A tile or an entry bundle, as a tlog-tiles path names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TilePath {
    /// `tile/<L>/<N>[.p/<W>]`.
    Hashes(TileId),
    /// `tile/entries/<N>[.p/<W>]`: entries `N*256..N*256+W`.
    Entries {
        /// Bundle index.
        index: u64,
        /// Entries in it; 256 for a full bundle.
        width: u64,
    },
}

/// The `<N>[.p/<W>]` part of a path: thousands as `x`-prefixed directories.
fn index_path(index: u64, width: u64) -> String {
    let mut groups = vec![format!("{:03}", index % 1000)];
    let mut rest = index / 1000;
    while rest > 0 {
        groups.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    groups.reverse();
    let mut path = groups.join("/");
    if width < TILE_WIDTH {
        path.push_str(&format!(".p/{width}"));
    }
    path
}

impl TilePath {
    /// The path, relative to the log's prefix.
    pub fn path(&self) -> String {
        match self {
            TilePath::Hashes(t) => format!("tile/{}/{}", t.level, index_path(t.index, t.width)),
            TilePath::Entries { index, width } => {
                format!("tile/entries/{}", index_path(*index, *width))
            }
        }
    }

    /// Parses a path relative to the log's prefix; only the canonical
    /// spelling of a tile is accepted (one name per tile, so caches agree).
    pub fn parse(path: &str) -> Option<TilePath> {
        let rest = path.strip_prefix("tile/")?;
        let (kind, rest) = rest.split_once('/')?;
        let (number, width) = match rest.split_once(".p/") {
            Some((number, w)) => (number, w.parse::<u64>().ok()?),
            None => (rest, TILE_WIDTH),
        };
        if width == 0 || width > TILE_WIDTH {
            return None;
        }
        let mut index: u64 = 0;
        for group in number.split('/') {
            let digits = group.strip_prefix('x').unwrap_or(group);
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            index = index
                .checked_mul(1000)?
                .checked_add(digits.parse::<u64>().ok()?)?;
        }
        let parsed = match kind {
            "entries" => TilePath::Entries { index, width },
            level => {
                let level: u8 = level.parse().ok().filter(|l| *l <= 7)?;
                TilePath::Hashes(TileId {
                    level,
                    index,
                    width,
                })
            }
        };
        (parsed.path() == path).then_some(parsed)
    }

    /// Whether the tile or bundle lies within a tree of `size` entries.
    pub fn within(&self, size: u64) -> bool {
        let (level, index, width) = match *self {
            TilePath::Hashes(t) => (t.level, t.index, t.width),
            TilePath::Entries { index, width } => (0, index, width),
        };
        let available = size >> (TILE_HEIGHT * u32::from(level));
        index
            .checked_mul(TILE_WIDTH)
            .and_then(|start| start.checked_add(width))
            .is_some_and(|end| end <= available)
    }

    /// Whether the content never changes (a full tile or bundle).
    pub fn is_full(&self) -> bool {
        match self {
            TilePath::Hashes(t) => t.width == TILE_WIDTH,
            TilePath::Entries { width, .. } => *width == TILE_WIDTH,
        }
    }
}

/// An entry bundle: each entry as a big-endian 16-bit length and its bytes.
pub fn entry_bundle(entries: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.len() + 2).sum());
    for entry in entries {
        out.extend_from_slice(&u16::try_from(entry.len()).ok()?.to_be_bytes());
        out.extend_from_slice(entry);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_paths_are_canonical() {
        let cases = [
            (
                TilePath::Hashes(TileId {
                    level: 0,
                    index: 0,
                    width: 256,
                }),
                "tile/0/000",
            ),
            (
                TilePath::Hashes(TileId {
                    level: 1,
                    index: 1_234_067,
                    width: 8,
                }),
                "tile/1/x001/x234/067.p/8",
            ),
            (
                TilePath::Entries {
                    index: 1000,
                    width: 256,
                },
                "tile/entries/x001/000",
            ),
        ];
        for (tile, path) in cases {
            assert_eq!(tile.path(), path);
            assert_eq!(TilePath::parse(path), Some(tile));
        }
        for bad in [
            "tile/0/x000/005",
            "tile/0/5",
            "tile/0/005.p/256",
            "tile/0/005.p/0",
            "tile/0/005.p/007",
            "tile/8/000",
            "tile/data/000",
            "tile/0/000/",
            "tile/0/x999/x999/x999/x999/x999/x999/x999/999",
        ] {
            assert_eq!(TilePath::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn tiles_beyond_the_tree_are_not_within_it() {
        let t = |level, index, width| {
            TilePath::Hashes(TileId {
                level,
                index,
                width,
            })
        };
        assert!(t(0, 0, 256).within(256));
        assert!(!t(0, 0, 256).within(255));
        assert!(t(0, 0, 255).within(255));
        assert!(t(1, 0, 1).within(256));
        assert!(!t(1, 0, 2).within(511));
        assert!(!t(0, u64::MAX, 256).within(u64::MAX));
    }
}
