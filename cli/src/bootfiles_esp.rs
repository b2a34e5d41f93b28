//! `dockroot boot-files`, the EFI system partition: finding it (the partition
//! systemd-boot says it was started from, `LoaderDevicePartUUID`), mounting it
//! for the run when it is not mounted, reading what is there
//! ([`read_state`]) and making the update ([`apply`]). System calls only; the
//! decisions are in `bootfiles_entry`.
//!
//! # Crash safety on vfat
//!
//! FAT has no journal and Linux's vfat gives no atomic rename: a rename writes
//! the new directory entry, then marks the old one deleted; a power cut in
//! between leaves both names (pointing at the same clusters) or, when the
//! target name existed, possibly only the old one. Nothing here relies on more:
//!
//! 1. the kernel and initramfs go into a new directory named by their content
//!    (`/dockroot/ENTRY/RELEASE-HASH12`), first under `NAME.dockroot-tmp`,
//!    each file fsynced, the directory fsynced, then renamed to NAME and its
//!    parent fsynced. The entry in use still names the old directory, which
//!    is not touched: a cut here leaves the old, complete setup (and a
//!    leftover that the next run removes). A directory with the right name is
//!    only trusted when its files are byte for byte the wanted ones.
//! 2. the entry is written as `ENTRY.conf.dockroot-tmp` (not `*.conf`: no boot
//!    loader reads it), fsynced, renamed over `ENTRY.conf`, the directory
//!    fsynced. Before the rename the old entry names the old complete files;
//!    after it the new entry names the new complete files (both exist at that
//!    moment). The one window vfat leaves is inside the rename itself, which
//!    is one directory entry update in one sector.
//! 3. only then are the directories the entry no longer names removed.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use dockroot::devices::{self, DeviceSpec};
use dockroot::{Context, Error, Result};

use crate::bootfiles_entry::{self as entry, Update, ENTRIES_DIR, ESP_DIR, INITRD_FILE, KERNEL_FILE, TMP_SUFFIX};

/// The efivarfs file systemd-boot sets to the partition GUID it was started from.
pub const LOADER_PARTUUID_VAR: &str =
    "/sys/firmware/efi/efivars/LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The ESP, found.
#[derive(Debug, Clone)]
pub struct Esp {
    /// Its partition GUID, when found by it.
    pub partuuid: Option<String>,
    /// Its device, when known.
    pub device: Option<PathBuf>,
    /// Its filesystem UUID (vfat: `ABCD-1234`), when known.
    pub fs_uuid: Option<String>,
    /// Where it is mounted already, if it is.
    pub mounted_at: Option<PathBuf>,
}

/// Find the ESP from `LoaderDevicePartUUID`: the partition with that GUID and
/// where it is mounted, if it is.
pub fn find_esp() -> Result<Esp> {
    let bytes = match std::fs::read(LOADER_PARTUUID_VAR) {
        Ok(b) => b,
        Err(e) => {
            return Err(Error::with(
                format!(
                "reading {LOADER_PARTUUID_VAR} (set by systemd-boot; not booted by it, or no efivarfs): give --esp DIR"
            ),
                e,
            ))
        }
    };
    let partuuid = entry::decode_loader_partuuid(&bytes).map_err(Error::msg)?;
    let spec = DeviceSpec::parse(&format!("PARTUUID={partuuid}"))?;
    let devs = devices::scan(Path::new("/sys/class/block"), Path::new("/dev"));
    let dev = devices::find(&spec, &devs)?.context(|| {
        format!("the EFI system partition PARTUUID={partuuid} (LoaderDevicePartUUID): no block device here has it")
    })?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").context(|| "reading /proc/self/mounts")?;
    let mounted_at = mount_points(&mounts).into_iter().find(|m| {
        rustix::fs::stat(m.as_path())
            .is_ok_and(|st| rustix::fs::major(st.st_dev) == dev.major && rustix::fs::minor(st.st_dev) == dev.minor)
    });
    Ok(Esp {
        partuuid: Some(partuuid),
        device: Some(dev.devnode.clone()),
        fs_uuid: dev.fs.as_ref().and_then(|f| f.uuid.clone()),
        mounted_at,
    })
}

/// The mount points of `/proc/self/mounts` (octal escapes decoded), the
/// usual ESP places first.
pub fn mount_points(mounts: &str) -> Vec<PathBuf> {
    let unescape = |s: &str| {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            let oct = b.get(i.saturating_add(1)..i.saturating_add(4)).and_then(|o| std::str::from_utf8(o).ok());
            match (c, oct.and_then(|o| u8::from_str_radix(o, 8).ok())) {
                (b'\\', Some(v)) => {
                    out.push(v);
                    i = i.saturating_add(4);
                }
                _ => {
                    out.push(c);
                    i = i.saturating_add(1);
                }
            }
        }
        PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
    };
    let mut v: Vec<PathBuf> = mounts.lines().filter_map(|l| l.split(' ').nth(1)).map(unescape).collect();
    let rank = |p: &PathBuf| ["/boot/efi", "/efi", "/boot"].iter().position(|w| p == Path::new(w)).unwrap_or(3);
    v.sort_by_key(rank);
    v
}

/// Run `f` on the ESP's mount point: where it is mounted, else mounted (vfat;
/// read-only unless `writable`) under `/run/dockroot/` (or the temporary
/// directory) for the run, unmounted and the directory removed afterwards
/// whatever happens.
pub fn with_esp_mounted<T>(esp: &Esp, writable: bool, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    if let Some(m) = &esp.mounted_at {
        return f(m);
    }
    let dev = esp.device.as_ref().context(|| "the EFI system partition has no device (a bug)")?;
    let run = Path::new("/run/dockroot");
    let base = if run.is_dir() { run.to_path_buf() } else { std::env::temp_dir() };
    let dir = base.join(format!("esp-{}", std::process::id()));
    std::fs::create_dir(&dir).context(|| format!("creating {}", dir.display()))?;
    use rustix::mount::MountFlags;
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let flags = if writable { flags } else { flags | MountFlags::RDONLY };
    let mounted = rustix::mount::mount(dev.as_path(), &dir, "vfat", flags, c"")
        .context(|| format!("mounting the EFI system partition {} (vfat) on {}", dev.display(), dir.display()));
    let r = mounted.and_then(|()| {
        let r = f(&dir);
        if let Err(e) = rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::empty()) {
            eprintln!("dockroot: could not unmount {} from {}: {e}", dev.display(), dir.display());
        }
        r
    });
    let _ = std::fs::remove_dir(&dir);
    r
}

/// Read `/loader/entries/ENTRY.conf` and list `/dockroot/ENTRY/` on the ESP at
/// `esp`; `wanted` (directory name, kernel, initramfs) is compared byte for byte.
pub fn read_state(esp: &Path, name: &str, wanted: (&str, &[u8], &[u8])) -> Result<entry::EspState> {
    let conf = esp.join(ENTRIES_DIR).join(format!("{name}.conf"));
    let entry_text = match std::fs::read(&conf) {
        Ok(b) if b.len() <= 1 << 16 => Some(String::from_utf8_lossy(&b).into_owned()),
        Ok(_) => Some(String::new()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::with(format!("reading {}", conf.display()), e)),
    };
    let temp_entry = esp.join(ENTRIES_DIR).join(format!("{name}.conf{TMP_SUFFIX}")).exists();
    let files = esp.join(ESP_DIR).join(name);
    let dirs = match std::fs::read_dir(&files) {
        Ok(rd) => rd.flatten().take(10_000).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::with(format!("listing {}", files.display()), e)),
    };
    let (dir, kernel, initrd) = wanted;
    let same = |file: &str, want: &[u8]| {
        let p = files.join(dir).join(file);
        std::fs::metadata(&p).is_ok_and(|m| m.len() == want.len() as u64)
            && std::fs::read(&p).is_ok_and(|have| have == want)
    };
    let wanted_complete = same(KERNEL_FILE, kernel) && same(INITRD_FILE, initrd);
    Ok(entry::EspState { entry_text, temp_entry, dirs, wanted_complete })
}

/// fsync a directory (some filesystems refuse: that is no error here).
fn sync_dir(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).context(|| format!("opening {}", dir.display()))?;
    match rustix::fs::fsync(f.as_fd()) {
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOTSUP) => Ok(()),
        Err(e) => Err(Error::with(format!("syncing {}", dir.display()), e)),
    }
}

/// Write out everything the filesystem of `esp` holds in memory (syncfs).
///
/// vfat needs it: a renamed file or directory gets its new directory entry with
/// its start cluster filled in only by the inode's own writeback, which an fsync
/// of the parent directory does not do; a power cut after such a rename (and
/// after the old files' removal reached the disk) left an entry naming free
/// clusters and a machine that did not boot (the UEFI power-cut test). syncfs
/// writes the inodes, the directories and the FAT, so each step below is on the
/// disk before the next one starts.
fn sync_fs(esp: &Path) -> Result<()> {
    let f = std::fs::File::open(esp).context(|| format!("opening {}", esp.display()))?;
    rustix::fs::syncfs(f.as_fd()).map_err(|e| Error::with(format!("syncing the filesystem of {}", esp.display()), e))
}

/// Create `dir` and the directories above it, each new one synced into its parent.
fn make_dirs(esp: &Path, rel: &str) -> Result<()> {
    let mut at = esp.to_path_buf();
    for c in rel.split('/') {
        let next = at.join(c);
        if !next.is_dir() {
            std::fs::create_dir(&next).context(|| format!("creating {}", next.display()))?;
            sync_dir(&at)?;
        }
        at = next;
    }
    Ok(())
}

fn write_new(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .context(|| format!("creating {}", path.display()))?;
    f.write_all(data).context(|| format!("writing {}", path.display()))?;
    f.sync_all().context(|| format!("syncing {}", path.display()))
}

fn remove_any(path: &Path) -> Result<()> {
    let r = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        _ => std::fs::remove_file(path),
    };
    r.context(|| format!("removing {}", path.display()))
}

/// Make `update` on the ESP mounted at `esp`, in the order the module's doc
/// explains; `kernel` and `initrd` are the files of `update.write_dir`.
pub fn apply(esp: &Path, name: &str, update: &Update, kernel: &[u8], initrd: &[u8]) -> Result<()> {
    let files_rel = format!("{ESP_DIR}/{name}");
    let files = esp.join(&files_rel);
    let entries = esp.join(ENTRIES_DIR);
    if let Some(dir) = &update.write_dir {
        make_dirs(esp, &files_rel)?;
        let tmp = files.join(format!("{dir}{TMP_SUFFIX}"));
        remove_any(&tmp)?;
        let written = (|| {
            std::fs::create_dir(&tmp).context(|| format!("creating {}", tmp.display()))?;
            write_new(&tmp.join(KERNEL_FILE), kernel)?;
            write_new(&tmp.join(INITRD_FILE), initrd)?;
            sync_dir(&tmp)
        })();
        if let Err(e) = written {
            // A full ESP, say: leave the space as it was (the entry in use is untouched).
            let _ = remove_any(&tmp);
            return Err(e);
        }
        // A directory of that name that is not what we want (a damaged copy).
        let dest = files.join(dir);
        remove_any(&dest)?;
        // The new files are on the disk before their directory gets its name.
        sync_fs(esp)?;
        std::fs::rename(&tmp, &dest).context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        sync_dir(&files)?;
        sync_fs(esp)?;
    }
    let tmp_entry = entries.join(format!("{name}.conf{TMP_SUFFIX}"));
    if let Some(text) = &update.write_entry {
        make_dirs(esp, ENTRIES_DIR)?;
        remove_any(&tmp_entry)?;
        write_new(&tmp_entry, text.as_bytes())?;
        sync_fs(esp)?;
        let conf = entries.join(format!("{name}.conf"));
        std::fs::rename(&tmp_entry, &conf)
            .context(|| format!("renaming {} to {}", tmp_entry.display(), conf.display()))?;
        sync_dir(&entries)?;
        // The entry, with its clusters, is on the disk before the old files go.
        sync_fs(esp)?;
    } else if update.remove_temp_entry {
        remove_any(&tmp_entry)?;
        sync_dir(&entries)?;
    }
    for d in &update.remove_dirs {
        remove_any(&files.join(d))?;
    }
    if !update.remove_dirs.is_empty() {
        sync_dir(&files)?;
        sync_fs(esp)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_mount_points_the_esp_places_first() {
        let m = "/dev/vda2 / btrfs rw 0 0\n/dev/vda1 /boot/efi vfat rw 0 0\n/dev/vdb /mnt/a\\040b ext4 rw 0 0\n";
        assert_eq!(mount_points(m), [PathBuf::from("/boot/efi"), PathBuf::from("/"), PathBuf::from("/mnt/a b")]);
    }
}
