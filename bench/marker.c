/*
 * marker: the benchmark image's /sbin/init (scripts/bench puts it in the top layer, so
 * every variant execs it as the image's init after copying the top layer).
 *
 * First thing, it writes "bench-marker: image init started" to /dev/kmsg: the kernel
 * stamps that record with the same clock as its "Run /init as init process" line, so
 * the init stage of every variant is measured the same way, from printk timestamps.
 * Then it prints, on the console:
 *   BENCH-KMSG <seconds> <message>   for the kernel log records the benchmark needs
 *                                    (the /init start, the btrfs module's init, this
 *                                    marker, dockroot's summary)
 *   BENCH-HOSTNAME <name>            /etc/hostname (the top layer's, if it was applied)
 *   BENCH-RECORD-BEGIN ... BENCH-RECORD-END   /run/dockroot/boot.json, if there is one
 *   BENCH-DONE
 * and powers the machine off. Nothing it does after the first write is measured.
 *
 * Build: gcc -static -O2 -o marker marker.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <unistd.h>

static const char MARK[] = "<2>bench-marker: image init started\n";

/* Kernel log messages the benchmark reads back. */
static const char *const WANTED[] = {
    "Run /init as init process",
    "Btrfs loaded",
    "bench-marker:",
    "dockroot: ready:",
    "bench-floor:",
    "bench-reference:",
};

static void put(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void puts_fd(int fd, const char *s) { put(fd, s, strlen(s)); }

int main(void) {
    int k = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
    if (k < 0) {
        /* A variant that gave us no /dev: mount one (after the mark would be better,
         * but without /dev there is no kmsg to mark in). */
        mount("devtmpfs", "/dev", "devtmpfs", 0, "mode=0755");
        k = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
    }
    if (k >= 0) {
        put(k, MARK, sizeof MARK - 1);
        close(k);
    }

    /* Keep the kernel's own console messages from interleaving with ours. */
    klogctl(8, NULL, 1);
    int con = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (con < 0)
        con = 1;

    /* The kernel log, from its start, without blocking: "prio,seq,usec,flags;message". */
    int r = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (r >= 0) {
        char rec[8192], line[8400];
        for (;;) {
            ssize_t n = read(r, rec, sizeof rec - 1);
            if (n < 0 && errno == EPIPE) /* overwritten records: go on with the next */
                continue;
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            rec[n] = 0;
            char *msg = strchr(rec, ';');
            if (!msg)
                continue;
            *msg++ = 0;
            char *nl = strchr(msg, '\n');
            if (nl)
                *nl = 0;
            unsigned long long usec = 0;
            if (sscanf(rec, "%*u,%*u,%llu", &usec) != 1)
                continue;
            for (size_t i = 0; i < sizeof WANTED / sizeof WANTED[0]; i++) {
                if (strstr(msg, WANTED[i])) {
                    snprintf(line, sizeof line, "BENCH-KMSG %llu.%06llu %s\n", usec / 1000000, usec % 1000000, msg);
                    puts_fd(con, line);
                    break;
                }
            }
        }
        close(r);
    }

    /* Shows that the top layer was applied (the benchmark's top layer sets it). */
    int h = open("/etc/hostname", O_RDONLY | O_CLOEXEC);
    if (h >= 0) {
        char name[256] = {0};
        ssize_t n = read(h, name, sizeof name - 1);
        if (n > 0) {
            name[strcspn(name, "\n")] = 0;
            puts_fd(con, "BENCH-HOSTNAME ");
            puts_fd(con, name);
            puts_fd(con, "\n");
        }
        close(h);
    }

    int b = open("/run/dockroot/boot.json", O_RDONLY | O_CLOEXEC);
    if (b >= 0) {
        char buf[4096];
        ssize_t n;
        puts_fd(con, "BENCH-RECORD-BEGIN\n");
        while ((n = read(b, buf, sizeof buf)) > 0)
            put(con, buf, (size_t)n);
        puts_fd(con, "\nBENCH-RECORD-END\n");
        close(b);
    }
    puts_fd(con, "BENCH-DONE\n");
    reboot(RB_POWER_OFF);
    for (;;)
        pause();
}
