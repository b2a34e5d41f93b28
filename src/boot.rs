//! The boot, stage by stage. Each stage lives in its own module; this one
//! only strings them together, times them, and turns any error into a clear
//! message and a reboot (there is no shell to drop into, and PID 1 must not
//! exit or panic).

use std::convert::Infallible;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::mount::MountFlags;

use crate::cmdline::{self, Params};
use crate::devices::{self, BlockDevice, DeviceSpec, WaitPolicy};
use crate::error::{Context, Error, Result};
use crate::reference::{self, ImageSpec};
use crate::{btrfs, logging, modules, rwlayer, store, switch_root, toplayer};

/// Where the root partition's top level (subvolid=5) is mounted while we work.
pub const STAGING_TOP: &str = "/.dockroot/top";
/// Where a top layer on another device is mounted.
pub const STAGING_TOPLAYER: &str = "/.dockroot/toplayer";
/// Where the rw layer is mounted as the new root.
pub const NEW_ROOT: &str = "/sysroot";

/// Stage timings, for the closing log line (and later the boot record).
#[derive(Default)]
struct Timings {
    start: Option<Instant>,
    stages: Vec<(&'static str, Duration)>,
}

impl Timings {
    fn new() -> Self {
        Timings { start: Some(Instant::now()), stages: Vec::new() }
    }

    fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f();
        self.stages.push((name, t.elapsed()));
        r
    }

    fn summary(&self) -> String {
        let total = self.start.map(|s| s.elapsed()).unwrap_or_default();
        let parts: Vec<String> = self.stages.iter().map(|(n, d)| format!("{n} {}ms", d.as_millis())).collect();
        format!("{}ms in all ({})", total.as_millis(), parts.join(", "))
    }
}

/// PID 1's entry point: boot, or explain why not and reboot.
pub fn run() -> ! {
    logging::init();
    let mut reboot_delay = cmdline::DEFAULT_REBOOT_DELAY;
    let err = match boot(&mut reboot_delay) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    fail(&err, reboot_delay)
}

/// Print the error where a person and the logs will see it, wait, reboot.
fn fail(err: &Error, delay: Duration) -> ! {
    log::error!("cannot boot: {err}");
    log::error!("rebooting in {} s (set dockroot.reboot_delay= to change this)", delay.as_secs());
    std::thread::sleep(delay);
    rustix::fs::sync();
    loop {
        if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::Restart) {
            log::error!("reboot failed ({e}); trying to power off");
            let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
        }
        // Only reached if the kernel refused both: keep saying so, never exit.
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn boot(reboot_delay: &mut Duration) -> Result<Infallible> {
    let mut t = Timings::new();
    t.run("early", mount_api_filesystems)?;
    switch_root::reopen_console();
    let kmsg_saved = logging::attach_kmsg();
    log::info!("dockroot {} starting", env!("CARGO_PKG_VERSION"));

    let cmdline = std::fs::read_to_string("/proc/cmdline").context(|| "reading /proc/cmdline")?;
    let (args, _) = cmdline::split(&cmdline);
    let params = Params::parse(&args).context(|| "in the kernel command line")?;
    *reboot_delay = params.reboot_delay;
    logging::set_console_debug(params.debug);
    for w in &params.warnings {
        log::warn!("{w}");
    }
    let image = image_spec(&params)?;
    let plan = RootPlan::from_params(&params)?;

    t.run("modules", load_modules)?;

    let root_spec = DeviceSpec::parse(&plan.root).context(|| format!("root={}", plan.root))?;
    let policy = WaitPolicy { timeout: params.device_timeout, delay: params.rootdelay };
    let root_dev = t.run("root device", || {
        devices::wait_for(&root_spec, &policy).map_err(|e| e.context(format!("root={}", plan.root)))
    })?;
    log::info!("root device {} is {}", root_spec, root_dev.devnode.display());

    let top = t.run("mount top level", || mount_top_level(&root_dev, &plan))?;
    let resolved = t.run("resolve image", || {
        let docker_root = Path::new(STAGING_TOP).join(plan.docker_path.join("/"));
        store::resolve_docker_btrfs(&docker_root, &image)
    })?;
    log::info!(
        "image {} is {} (layer subvolume {})",
        resolved.reference,
        resolved.image_id,
        resolved.subvolume.display()
    );
    let rw = t.run("rw layer", || {
        let mut image_dir = plan.docker_path.clone();
        image_dir.extend(resolved.subvolume.iter().map(|c| c.to_string_lossy().into_owned()));
        let image_fd = rwlayer::open_beneath(top.as_fd(), &image_dir)
            .context(|| format!("the layer subvolume of image {}", resolved.reference))?;
        if !btrfs::is_subvolume(image_fd.as_fd())? {
            return Err(Error::msg(format!(
                "/{} (top layer of image {}) is not a btrfs subvolume: is dockerd using the btrfs storage driver?",
                image_dir.join("/"),
                resolved.reference
            )));
        }
        rwlayer::replace(top.as_fd(), &plan.rw_subvol, image_fd.as_fd())
    })?;
    log::info!("rw layer /{} is a fresh snapshot of {}", plan.rw_subvol.join("/"), resolved.reference);

    t.run("top layer", || apply_top_layer(&params, &plan, &root_dev, &policy, rw.as_fd()))?;
    btrfs::sync(rw.as_fd()).context(|| "syncing the rw layer")?;
    drop(rw);
    drop(top);
    t.run("unmount staging", || {
        rustix::mount::unmount(STAGING_TOP, rustix::mount::UnmountFlags::empty())
            .context(|| format!("unmounting {STAGING_TOP}"))
    })?;

    let new_root = t.run("mount root", || mount_new_root(&root_dev, &plan, params.read_only))?;
    let candidates = switch_root::init_candidates(params.init.as_deref());
    let init = switch_root::find_init(new_root.as_fd(), &candidates)?;
    drop(new_root);

    log::info!("ready: {}", t.summary());
    logging::detach_kmsg(kmsg_saved);
    // The init's arguments are ours: the kernel passed us what it did not
    // understand and everything after "--".
    let init_args: Vec<String> = std::env::args().skip(1).collect();
    let term = std::env::var("TERM").unwrap_or_else(|_| "linux".to_string());
    let env = [("HOME".to_string(), "/".to_string()), ("TERM".to_string(), term)];
    switch_root::switch_root(Path::new(NEW_ROOT), &init, &init_args, &env)
}

/// The image to boot: `dockroot.image=` if given, else the embedded config.
fn image_spec(params: &Params) -> Result<ImageSpec> {
    if let Some(img) = &params.image {
        return reference::parse(img).context(|| format!("dockroot.image={img}"));
    }
    let bytes = match std::fs::read(cmdline::CONFIG_PATH) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::msg(format!(
                "no image to boot: {} is missing from the initramfs and dockroot.image= is not set",
                cmdline::CONFIG_PATH
            )))
        }
        Err(e) => return Err(Error::with(format!("reading {}", cmdline::CONFIG_PATH), e)),
    };
    reference::from_prior_art_config(&bytes).context(|| format!("in {}", cmdline::CONFIG_PATH))
}

/// The checked, pure part of the plan: which device, which paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootPlan {
    pub root: String,
    pub fstype: String,
    pub rw_subvol: Vec<String>,
    pub docker_path: Vec<String>,
    /// rootflags without subvol=/subvolid=, for the staging mount.
    pub staging_flags: String,
    /// toplayer_path below the toplayer filesystem's root, if any.
    pub toplayer_path: Option<Vec<String>>,
}

impl RootPlan {
    pub fn from_params(p: &Params) -> Result<RootPlan> {
        let root = p.root.clone().context(|| "root= is not set: it must name the partition with the Docker data")?;
        let fstype = p.rootfstype.clone().unwrap_or_else(|| "btrfs".to_string());
        if fstype != "btrfs" {
            return Err(Error::msg(format!(
                "rootfstype={fstype}: the rw layer is a btrfs snapshot, so root must be btrfs"
            )));
        }
        let subvol = p.rw_subvol().context(|| {
            "rootflags=subvol=NAME is not set: it names the rw layer (a subvolume dockroot creates at every boot)"
        })?;
        let rw_subvol = cmdline::relative_path("rootflags=subvol", subvol)?;
        if rw_subvol.is_empty() {
            return Err(Error::msg("rootflags=subvol= names the top level; it must name the rw layer's subvolume"));
        }
        let docker_path = cmdline::relative_path("docker_path", &p.docker_path)?;
        if docker_path.starts_with(&rw_subvol) || rw_subvol.starts_with(&docker_path) {
            return Err(Error::msg(format!(
                "docker_path={} and rootflags=subvol={} overlap: the rw layer would replace Docker's data",
                p.docker_path, subvol
            )));
        }
        let flags = p.rootflags.clone().unwrap_or_default();
        let staging_flags = cmdline::without_option(&cmdline::without_option(&flags, "subvol"), "subvolid");
        let toplayer_path =
            p.toplayer_path.as_deref().map(|t| cmdline::relative_path("toplayer_path", t)).transpose()?;
        Ok(RootPlan { root, fstype, rw_subvol, docker_path, staging_flags, toplayer_path })
    }
}

fn mkdir_p(path: &str) -> Result<()> {
    std::fs::create_dir_all(path).context(|| format!("creating {path}"))
}

fn mount_api_filesystems() -> Result<()> {
    let nosuid = MountFlags::NOSUID;
    let table: [(&str, &str, &str, MountFlags, &str); 4] = [
        ("devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755"),
        ("proc", "/proc", "proc", nosuid | MountFlags::NODEV | MountFlags::NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", nosuid | MountFlags::NODEV | MountFlags::NOEXEC, ""),
        ("tmpfs", "/run", "tmpfs", nosuid | MountFlags::NODEV, "mode=0755"),
    ];
    for (src, target, fstype, flags, data) in table {
        mkdir_p(target)?;
        match mount(src, target, fstype, flags, data) {
            Ok(()) => {}
            // Already mounted (a kernel with devtmpfs.mount=1, say): fine.
            Err(e) if e.errno() == Some(rustix::io::Errno::BUSY) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn mount(src: &str, target: &str, fstype: &str, flags: MountFlags, data: &str) -> Result<()> {
    let data_c = std::ffi::CString::new(data).context(|| format!("mount options for {target} contain a NUL byte"))?;
    rustix::mount::mount(src, target, fstype, flags, data_c.as_c_str())
        .context(|| format!("mounting {src} ({fstype}, options {data:?}) on {target}"))
}

fn load_modules() -> Result<()> {
    let Some(index) = modules::read_index(Path::new("/"))? else {
        log::info!("no kernel modules in this initramfs");
        return Ok(());
    };
    // load_all logs each failure and the summary itself.
    modules::load_all(&index, Path::new("/"))?;
    Ok(())
}

fn join_options(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a},{b}"),
    }
}

fn mount_top_level(dev: &BlockDevice, plan: &RootPlan) -> Result<OwnedFd> {
    mkdir_p(STAGING_TOP)?;
    let devnode = dev.devnode.to_string_lossy();
    let opts = join_options(&plan.staging_flags, "subvolid=5");
    mount(&devnode, STAGING_TOP, &plan.fstype, MountFlags::empty(), &opts)
        .map_err(|e| e.context(format!("mounting the top level of the root partition {devnode}")))?;
    rustix::fs::open(STAGING_TOP, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .context(|| format!("opening {STAGING_TOP}"))
}

fn apply_top_layer(
    params: &Params,
    plan: &RootPlan,
    root_dev: &BlockDevice,
    policy: &WaitPolicy,
    rw: std::os::fd::BorrowedFd<'_>,
) -> Result<()> {
    let Some(toplayer) = &params.toplayer else {
        log::info!("no toplayer= given: the image boots without machine-specific files");
        return Ok(());
    };
    let spec = DeviceSpec::parse(toplayer).context(|| format!("toplayer={toplayer}"))?;
    let subpath = plan.toplayer_path.clone().unwrap_or_default();
    let same_device = matches!(devices::find(&spec, std::slice::from_ref(root_dev)), Ok(Some(_)));
    let (src, mounted): (PathBuf, bool) = if same_device && params.toplayerflags.as_deref().is_none_or(only_subvol) {
        // Same partition as root: reuse the top-level mount, no second mount.
        if plan.toplayer_path.is_none() {
            return Err(Error::msg(
                "toplayer= is the root partition but toplayer_path= is not set: \
                 it must name the top layer directory on that partition",
            ));
        }
        let mut parts = params
            .toplayerflags
            .as_deref()
            .and_then(|f| cmdline::mount_option(f, "subvol"))
            .map(|s| cmdline::relative_path("toplayerflags=subvol", s))
            .transpose()?
            .unwrap_or_default();
        parts.extend(subpath);
        (Path::new(STAGING_TOP).join(parts.join("/")), false)
    } else {
        let dev = devices::wait_for(&spec, policy).context(|| format!("waiting for toplayer={toplayer}"))?;
        let fstype = match (&params.toplayerfstype, &dev.fs) {
            (Some(t), _) => t.clone(),
            (None, Some(fs)) => fs.fstype.name().to_string(),
            (None, None) => {
                return Err(Error::msg(format!(
                    "toplayer={toplayer} ({}): no filesystem recognised; set toplayerfstype=",
                    dev.devnode.display()
                )))
            }
        };
        mkdir_p(STAGING_TOPLAYER)?;
        let devnode = dev.devnode.to_string_lossy().into_owned();
        let flags = params.toplayerflags.clone().unwrap_or_default();
        let mut mounted = mount(&devnode, STAGING_TOPLAYER, &fstype, MountFlags::RDONLY, &flags);
        if matches!(&mounted, Err(e) if e.errno() == Some(rustix::io::Errno::NODEV))
            && dev.fs.as_ref().is_some_and(|fs| fs.fstype.is_ext())
            && params.toplayerfstype.is_none()
        {
            // Kernels without ext2/ext3 drivers mount those with the ext4 driver.
            mounted = mount(&devnode, STAGING_TOPLAYER, "ext4", MountFlags::RDONLY, &flags);
        }
        mounted.map_err(|e| e.context(format!("mounting the top layer device toplayer={toplayer}")))?;
        (Path::new(STAGING_TOPLAYER).join(subpath.join("/")), true)
    };
    let result = toplayer::apply(&src, rw);
    if mounted {
        if let Err(e) = rustix::mount::unmount(STAGING_TOPLAYER, rustix::mount::UnmountFlags::empty()) {
            log::warn!("could not unmount {STAGING_TOPLAYER}: {e}");
        }
    }
    let stats = result.map_err(|e| e.context(format!("applying the top layer {}", src.display())))?;
    log::info!(
        "top layer {} applied: {} files ({} bytes), {} dirs, {} symlinks, {} hard links, {} special files",
        src.display(),
        stats.files,
        stats.bytes,
        stats.dirs,
        stats.symlinks,
        stats.hardlinks,
        stats.specials
    );
    Ok(())
}

/// True if the mount options name only a subvolume (so a mount we already
/// have of the same device can serve).
fn only_subvol(flags: &str) -> bool {
    flags.split(',').filter(|o| !o.is_empty()).all(|o| o.starts_with("subvol="))
}

fn mount_new_root(dev: &BlockDevice, plan: &RootPlan, read_only: bool) -> Result<OwnedFd> {
    mkdir_p(NEW_ROOT)?;
    let devnode = dev.devnode.to_string_lossy();
    let flags = if read_only { MountFlags::RDONLY } else { MountFlags::empty() };
    let opts = join_options(&plan.staging_flags, &format!("subvol=/{}", plan.rw_subvol.join("/")));
    mount(&devnode, NEW_ROOT, &plan.fstype, flags, &opts)
        .map_err(|e| e.context(format!("mounting the rw layer as the new root from {devnode}")))?;
    rustix::fs::open(NEW_ROOT, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .context(|| format!("opening {NEW_ROOT}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(cmd: &str) -> Result<RootPlan> {
        RootPlan::from_params(&Params::parse(&cmdline::split(cmd).0).unwrap())
    }

    #[test]
    fn plan_from_prior_art_cmdline() {
        let p = plan("root=LABEL=linux rootflags=subvol=docker_rwlayer,compress=zstd docker_path=docker toplayer_path=/boot_docker").unwrap();
        assert_eq!(p.rw_subvol, vec!["docker_rwlayer"]);
        assert_eq!(p.docker_path, vec!["docker"]);
        assert_eq!(p.staging_flags, "compress=zstd");
        assert_eq!(p.fstype, "btrfs");
        assert_eq!(p.toplayer_path, Some(vec!["boot_docker".to_string()]));
    }

    #[test]
    fn plan_errors_name_the_parameter() {
        let cases = [
            ("rootflags=subvol=rw", "root= is not set"),
            ("root=/dev/vda", "rootflags=subvol=NAME is not set"),
            ("root=/dev/vda rootflags=subvol=/", "names the top level"),
            ("root=/dev/vda rootflags=subvol=../x", "'..' is not allowed"),
            ("root=/dev/vda rootflags=subvol=rw rootfstype=ext4", "root must be btrfs"),
            ("root=/dev/vda rootflags=subvol=rw docker_path=/var/../../x", "'..' is not allowed"),
            ("root=/dev/vda rootflags=subvol=var docker_path=var/lib/docker", "overlap"),
            ("root=/dev/vda rootflags=subvol=rw toplayer_path=a/../..", "'..' is not allowed"),
        ];
        for (cmd, want) in cases {
            let e = plan(cmd).unwrap_err().to_string();
            assert!(e.contains(want), "{cmd}: {e}");
        }
    }

    #[test]
    fn options() {
        assert_eq!(join_options("", "subvolid=5"), "subvolid=5");
        assert_eq!(join_options("degraded", "subvolid=5"), "degraded,subvolid=5");
        assert!(only_subvol("subvol=a"));
        assert!(only_subvol(""));
        assert!(!only_subvol("subvol=a,ro"));
    }
}
