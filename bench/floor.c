/*
 * floor: the least an init can do to boot the image the way dockroot does, as a
 * sequence of system calls with nothing else: no command line, no config, no store
 * lookup (the image's layer subvolume, the device and the module list are compiled in
 * by scripts/bench), no checks, no logging beyond one line at the end.
 *
 *   mount devtmpfs; finit_module each module in dependency order (one at a time);
 *   wait for the disk (inotify on /dev, no polling); mount the top level (subvolid=5);
 *   delete the previous rw layer; snapshot the image's layer subvolume as the rw
 *   layer; copy the top layer into it (FICLONE for file data, owners, modes, times,
 *   symlinks, hard links); mount the rw layer; move /dev; switch root; exec /sbin/init.
 *
 * Build (scripts/bench does this):
 *   gcc -static -O2 -DIMAGE_SUBVOL='"var/lib/docker/btrfs/subvolumes/<cache-id>"' \
 *       -DMODULES='"lib/modules/.../a.ko", "lib/modules/.../b.ko"' -o floor floor.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/btrfs.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef IMAGE_SUBVOL
#error "define IMAGE_SUBVOL (the image's layer subvolume below the top level)"
#endif
#ifndef MODULES
#define MODULES
#endif
#ifndef DEVICE
#define DEVICE "vda"
#endif
#define RW "rwlayer"
#define TOPLAYER "toplayer"

static const char *const modules[] = {MODULES};

static void die(const char *what) {
    char msg[256];
    int n = snprintf(msg, sizeof msg, "<2>bench-floor: %s failed: %s\n", what, strerror(errno));
    int k = open("/dev/kmsg", O_WRONLY);
    if (k >= 0 && n > 0)
        write(k, msg, (size_t)n);
    for (;;)
        pause();
}

/* Hard links of the top layer: first copy of each multiply-linked inode. */
struct link {
    dev_t dev;
    ino_t ino;
    int dir;
    char name[256];
};
static struct link links[256];
static int nlinks;

static void finish(int fd, const struct stat *st) {
    fchown(fd, st->st_uid, st->st_gid);
    fchmod(fd, st->st_mode & 07777);
    struct timespec t[2] = {st->st_atim, st->st_mtim};
    futimens(fd, t);
}

static void copy_file(int sdir, int ddir, const char *name, const struct stat *st) {
    if (st->st_nlink > 1) {
        for (int i = 0; i < nlinks; i++)
            if (links[i].dev == st->st_dev && links[i].ino == st->st_ino) {
                unlinkat(ddir, name, 0);
                if (linkat(links[i].dir, links[i].name, ddir, name, 0) == 0)
                    return;
            }
    }
    int s = openat(sdir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    unlinkat(ddir, name, 0);
    int d = openat(ddir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (s < 0 || d < 0)
        die("opening a top layer file");
    if (st->st_size > 0 && ioctl(d, FICLONE, s) != 0) {
        ssize_t n;
        while ((n = copy_file_range(s, NULL, d, NULL, 1 << 30, 0)) > 0)
            ;
        if (n < 0)
            die("copying a top layer file");
    }
    finish(d, st);
    if (st->st_nlink > 1 && nlinks < 256) {
        links[nlinks] = (struct link){st->st_dev, st->st_ino, ddir, {0}};
        snprintf(links[nlinks].name, sizeof links[nlinks].name, "%s", name);
        nlinks++;
    }
    close(s);
    close(d);
}

/* cp -a sdir/. ddir/ (no xattrs: the benchmark's top layer has none). */
static void copy_tree(int sdir, int ddir) {
    DIR *dir = fdopendir(sdir);
    if (!dir)
        die("reading a top layer directory");
    struct dirent *e;
    while ((e = readdir(dir))) {
        const char *n = e->d_name;
        if (n[0] == '.' && (!n[1] || (n[1] == '.' && !n[2])))
            continue;
        struct stat st;
        if (fstatat(sdir, n, &st, AT_SYMLINK_NOFOLLOW) != 0)
            die("stat of a top layer entry");
        if (S_ISDIR(st.st_mode)) {
            mkdirat(ddir, n, 0700);
            int s = openat(sdir, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            int d = openat(ddir, n, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (s < 0 || d < 0)
                die("opening a top layer directory");
            copy_tree(s, d); /* closes s */
            finish(d, &st);
            /* d stays open: hard links made later may name it as their first copy's dir */
        } else if (S_ISREG(st.st_mode)) {
            copy_file(sdir, ddir, n, &st);
        } else if (S_ISLNK(st.st_mode)) {
            char target[4096];
            ssize_t len = readlinkat(sdir, n, target, sizeof target - 1);
            if (len < 0)
                die("reading a top layer symlink");
            target[len] = 0;
            unlinkat(ddir, n, 0);
            symlinkat(target, ddir, n);
            fchownat(ddir, n, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW);
            struct timespec t[2] = {st.st_atim, st.st_mtim};
            utimensat(ddir, n, t, AT_SYMLINK_NOFOLLOW);
        } else {
            unlinkat(ddir, n, 0);
            mknodat(ddir, n, st.st_mode, st.st_rdev);
            fchownat(ddir, n, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW);
            struct timespec t[2] = {st.st_atim, st.st_mtim};
            utimensat(ddir, n, t, AT_SYMLINK_NOFOLLOW);
        }
    }
    closedir(dir);
}

int main(void) {
    if (mount("devtmpfs", "/dev", "devtmpfs", 0, "mode=0755") != 0)
        die("mounting /dev");
    int in = inotify_init1(IN_CLOEXEC);
    inotify_add_watch(in, "/dev", IN_CREATE);

    for (size_t i = 0; i < sizeof modules / sizeof modules[0]; i++) {
        int fd = open(modules[i], O_RDONLY | O_CLOEXEC);
        syscall(SYS_finit_module, fd, "", 0); /* EEXIST, ENODEV (CPU lacks a feature): fine */
        close(fd);
    }

    char ev[4096];
    while (access("/dev/" DEVICE, F_OK) != 0)
        if (read(in, ev, sizeof ev) < 0 && errno != EINTR)
            die("waiting for /dev/" DEVICE);
    close(in);

    if (mount("/dev/" DEVICE, "/top", "btrfs", 0, "subvolid=5") != 0)
        die("mounting the top level");
    int top = open("/top", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct btrfs_ioctl_vol_args del = {0};
    strcpy(del.name, RW);
    ioctl(top, BTRFS_IOC_SNAP_DESTROY, &del); /* ENOENT on a first boot: fine */

    struct btrfs_ioctl_vol_args_v2 snap = {0};
    snap.fd = openat(top, IMAGE_SUBVOL, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    strcpy(snap.name, RW);
    if (snap.fd < 0 || ioctl(top, BTRFS_IOC_SNAP_CREATE_V2, &snap) != 0)
        die("snapshotting the image");
    close(snap.fd);

    int src = openat(top, TOPLAYER, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rw = openat(top, RW, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (src < 0 || rw < 0)
        die("opening the top layer");
    copy_tree(src, rw);

    if (mount("/dev/" DEVICE, "/newroot", "btrfs", 0, "subvol=" RW) != 0)
        die("mounting the rw layer");
    if (mount("/dev", "/newroot/dev", NULL, MS_MOVE, NULL) != 0)
        die("moving /dev");
    if (chdir("/newroot") != 0 || mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0 || chdir("/") != 0)
        die("switching root");
    char *const argv[] = {"/sbin/init", NULL};
    char *const envp[] = {"HOME=/", "TERM=linux", NULL};
    execve("/sbin/init", argv, envp);
    die("exec /sbin/init");
    return 1;
}
