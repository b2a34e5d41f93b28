//! Shared fixtures for the loop-device integration tests. They need root,
//! mkfs.btrfs and mount (and the tools a test names); without them they fail
//! (never skip).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fail the test unless we run as root.
pub fn require_root() {
    assert_eq!(rustix::process::geteuid().as_raw(), 0, "loop-device tests must run as root");
}

/// Run a command, panicking with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out =
        Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh, uniquely named directory under /tmp, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!("/tmp/dockroot-{tag}-{}-{n}-{nanos}", std::process::id()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A 512 MiB sparse filesystem image (btrfs unless made with
/// [`LoopFs::with_mkfs`]), loop-mounted at `<dir>/mnt`; unmounted and
/// removed on drop.
pub struct LoopFs {
    pub tmp: TempDir,
    pub image: PathBuf,
    pub mnt: PathBuf,
}

/// The btrfs tests' name for it.
pub type LoopBtrfs = LoopFs;

impl LoopFs {
    /// A btrfs.
    pub fn new() -> LoopFs {
        LoopFs::with_mkfs("btrfs", &["mkfs.btrfs", "-q", "-f"])
    }

    /// A filesystem made by `mkfs` (the command and its options; the image
    /// path is appended).
    pub fn with_mkfs(tag: &str, mkfs: &[&str]) -> LoopFs {
        require_root();
        let tmp = TempDir::new(tag);
        let image = tmp.path.join("fs.img");
        let mnt = tmp.path.join("mnt");
        let f = fs::File::create(&image).unwrap();
        f.set_len(512 << 20).unwrap();
        drop(f);
        fs::create_dir(&mnt).unwrap();
        let (cmd, args) = mkfs.split_first().expect("a mkfs command");
        let mut args = args.to_vec();
        args.push(image.to_str().unwrap());
        run(cmd, &args);
        run("mount", &["-o", "loop", image.to_str().unwrap(), mnt.to_str().unwrap()]);
        LoopFs { tmp, image, mnt }
    }

    /// An O_DIRECTORY fd for a path.
    pub fn dir(path: &Path) -> fs::File {
        fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
    }

    /// `btrfs subvolume list` output paths for the whole filesystem.
    pub fn subvolume_list(&self) -> Vec<String> {
        let out = run("btrfs", &["subvolume", "list", self.mnt.to_str().unwrap()]);
        out.lines().filter_map(|l| l.split(" path ").nth(1).map(str::to_string)).collect()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mnt = self.mnt.to_str().unwrap_or_default().to_string();
        let ok = Command::new("umount").arg(&mnt).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").args(["-l", &mnt]).status();
        }
        let _ = fs::remove_file(&self.image);
    }
}

/// A tmpfs mounted at a fresh temp dir (noatime, so reading files does not
/// change what a later copy sees); unmounted on drop.
pub struct Tmpfs {
    pub tmp: TempDir,
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn new() -> Tmpfs {
        require_root();
        let tmp = TempDir::new("tmpfs");
        let path = tmp.path.join("fs");
        fs::create_dir(&path).unwrap();
        run("mount", &["-t", "tmpfs", "-o", "noatime,mode=755", "tmpfs", path.to_str().unwrap()]);
        Tmpfs { tmp, path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = self.path.to_str().unwrap_or_default().to_string();
        let ok = Command::new("umount").arg(&p).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").args(["-l", &p]).status();
        }
    }
}

/// Fail the test unless every program in `tools` is installed.
pub fn require_tools(tools: &[&str]) {
    for t in tools {
        let found =
            Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success());
        assert!(found, "{t} is not installed: run scripts/setup");
    }
}

/// A containerd daemon with its root at `root` and its state and socket in
/// `tmp`; killed on drop.
pub struct Containerd {
    child: std::process::Child,
    socket: PathBuf,
}

impl Containerd {
    pub fn start(root: &Path, tmp: &Path) -> Containerd {
        let state = tmp.join("cstate");
        fs::create_dir_all(&state).unwrap();
        let socket = state.join("ctd.sock");
        let config = tmp.join("containerd.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\n[grpc]\n  address = \"{}\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable = true\n",
                root.display(),
                state.display(),
                socket.display()
            ),
        )
        .unwrap();
        let log = fs::File::create(tmp.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd is installed (run scripts/setup)");
        let c = Containerd { child, socket };
        for _ in 0..100 {
            if c.socket.exists()
                && Command::new("ctr").args(["-a", c.sock(), "version"]).output().is_ok_and(|o| o.status.success())
            {
                return c;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("containerd did not start: {}", fs::read_to_string(tmp.join("containerd.log")).unwrap_or_default());
    }

    pub fn sock(&self) -> &str {
        self.socket.to_str().unwrap()
    }

    /// `ctr` in namespace moby.
    pub fn ctr(&self, args: &[&str]) -> String {
        let mut all = vec!["-a", self.sock(), "-n", "moby"];
        all.extend_from_slice(args);
        run("ctr", &all)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
