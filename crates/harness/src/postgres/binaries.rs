//! Finding `initdb` and `pg_ctl`: `BGSESSION_PG_BIN`, else `PATH`, else the highest
//! `/usr/lib/postgresql/<version>/bin` (Debian's layout, where the binaries are not on
//! `PATH` by default).

use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::{Error, Result};

/// The environment variable naming the directory of the PostgreSQL binaries. When it is
/// set, only that directory is searched: an explicit choice is never overridden by
/// whatever else happens to be installed.
pub const PG_BIN_ENV: &str = "BGSESSION_PG_BIN";

/// Where distribution packages put one directory per major version (Debian, Ubuntu).
pub const VERSIONED_ROOT: &str = "/usr/lib/postgresql";

/// The two programs a cluster needs; every other tool (`pgbench`, `postgres`) is looked
/// up beside them.
const REQUIRED_PROGRAMS: [&str; 2] = ["initdb", "pg_ctl"];

/// Where the finder looks, in order. [`Search::from_env`] is the real one; tests build
/// their own to show what happens when nothing is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// The directory named by [`PG_BIN_ENV`]; when set, the only place searched.
    pub pg_bin: Option<PathBuf>,
    /// The directories of `PATH`, in order.
    pub path: Vec<PathBuf>,
    /// The directory holding one `<version>/bin` per installed major version.
    pub versioned_root: PathBuf,
}

impl Search {
    /// The search this process's environment asks for.
    pub fn from_env() -> Search {
        Search {
            pg_bin: std::env::var_os(PG_BIN_ENV)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from),
            path: std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).collect())
                .unwrap_or_default(),
            versioned_root: PathBuf::from(VERSIONED_ROOT),
        }
    }
}

/// One place the finder looked, for the "not found" error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchedPlace {
    /// Why it was searched: `BGSESSION_PG_BIN`, `PATH` or the versioned root.
    pub origin: PlaceOrigin,
    /// The directory (or, for a versioned root without any version, its pattern).
    pub dir: PathBuf,
}

/// Why a place was searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceOrigin {
    /// Named by [`PG_BIN_ENV`].
    PgBinEnv,
    /// A directory of `PATH`.
    Path,
    /// A `<version>/bin` under the versioned root.
    Versioned,
}

impl fmt::Display for SearchedPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = match self.origin {
            PlaceOrigin::PgBinEnv => PG_BIN_ENV,
            PlaceOrigin::Path => "PATH",
            PlaceOrigin::Versioned => "installed versions",
        };
        write!(f, "{} ({origin})", self.dir.display())
    }
}

/// The PostgreSQL programs found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    bin_dir: PathBuf,
}

impl Binaries {
    /// Finds the binaries as this process's environment says ([`Search::from_env`]).
    ///
    /// # Errors
    /// [`Error::BinariesNotFound`] listing every place looked in.
    pub fn find() -> Result<Binaries> {
        Binaries::find_in(&Search::from_env())
    }

    /// Finds the binaries in the places `search` names: its `pg_bin` alone if set, else
    /// the first `PATH` directory holding both `initdb` and `pg_ctl`, else the highest
    /// version under the versioned root.
    ///
    /// # Errors
    /// [`Error::BinariesNotFound`] listing every place looked in.
    pub fn find_in(search: &Search) -> Result<Binaries> {
        let mut looked = Vec::new();
        if let Some(dir) = &search.pg_bin {
            return Binaries::in_dir(dir, PlaceOrigin::PgBinEnv, &mut looked)
                .ok_or(Error::BinariesNotFound { looked });
        }
        for dir in &search.path {
            if let Some(found) = Binaries::in_dir(dir, PlaceOrigin::Path, &mut looked) {
                return Ok(found);
            }
        }
        let versions = installed_versions(&search.versioned_root);
        if versions.is_empty() {
            looked.push(SearchedPlace {
                origin: PlaceOrigin::Versioned,
                dir: search.versioned_root.join("*").join("bin"),
            });
        }
        for dir in versions {
            if let Some(found) = Binaries::in_dir(&dir, PlaceOrigin::Versioned, &mut looked) {
                return Ok(found);
            }
        }
        Err(Error::BinariesNotFound { looked })
    }

    /// The binaries of `dir` when it holds every required program; the directory is
    /// recorded in `looked` either way.
    fn in_dir(dir: &Path, origin: PlaceOrigin, looked: &mut Vec<SearchedPlace>) -> Option<Self> {
        looked.push(SearchedPlace {
            origin,
            dir: dir.to_path_buf(),
        });
        if !REQUIRED_PROGRAMS
            .iter()
            .all(|program| is_executable(&dir.join(program)))
        {
            return None;
        }
        // A `PATH` entry is often a symlink farm (/usr/local/bin/pg_ctl -> the versioned
        // bin); the siblings we need (postgres, pgbench) live beside the real file.
        let bin_dir = std::fs::canonicalize(dir.join("pg_ctl"))
            .ok()
            .and_then(|real| real.parent().map(Path::to_path_buf))
            .filter(|real_dir| {
                REQUIRED_PROGRAMS
                    .iter()
                    .all(|program| is_executable(&real_dir.join(program)))
            })
            .unwrap_or_else(|| dir.to_path_buf());
        Some(Binaries { bin_dir })
    }

    /// The directory the programs were found in (symlinks resolved).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// `initdb`.
    pub fn initdb(&self) -> PathBuf {
        self.bin_dir.join("initdb")
    }

    /// `pg_ctl`.
    pub fn pg_ctl(&self) -> PathBuf {
        self.bin_dir.join("pg_ctl")
    }

    /// Another program of the same installation (`pgbench`, `psql`), if it is there.
    pub fn tool(&self, name: &str) -> Option<PathBuf> {
        let path = self.bin_dir.join(name);
        is_executable(&path).then_some(path)
    }
}

/// The `<version>/bin` directories under `root`, highest version first. Names that are
/// not versions (`common`, a stray file) are ignored.
fn installed_versions(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u64>, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|part| part.parse::<u64>().ok())
                .collect::<Option<Vec<u64>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    // Numeric order: 10 is higher than 9.6, which a string sort gets wrong.
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Versions sort numerically (10 above 9.6, above 9), and non-version names are
    /// skipped, shown on a directory tree made for the test.
    #[test]
    fn versions_sort_numerically() {
        let root = tempfile::tempdir().expect("temp dir");
        for name in ["9.6", "10", "9", "common"] {
            std::fs::create_dir_all(root.path().join(name).join("bin")).expect("mkdir");
        }
        let found: Vec<PathBuf> = installed_versions(root.path());
        let expected: Vec<PathBuf> = ["10", "9.6", "9"]
            .iter()
            .map(|name| root.path().join(name).join("bin"))
            .collect();
        assert_eq!(found, expected);
    }
}
