#!/bin/sh
# The reference initramfs' /init: the prior art's steps (a shell hook with busybox and
# btrfs-progs), as scripts/bench measures them against dockroot. Same kernel command
# line and config as dockroot (root=LABEL=... rootflags=subvol=NAME docker_path=
# toplayer_path=, /etc/docker-btrfs.json), same work: load the modules, wait for the
# disk, resolve the image in Docker's store (repositories.json, the image config's
# diff IDs, chain IDs with sha256sum, layerdb cache-id: what the prior art's helper
# did), delete the previous rw layer, snapshot the image, cp -a the top layer, switch_root.
# (busybox's applet links are made when the archive is built.)
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys

while read -r m; do
    insmod "/$m" 2>/dev/null
done </etc/modules.order

label= subvol= docker_path=var/lib/docker toplayer_path=
for arg in $(cat /proc/cmdline); do
    case $arg in
    root=LABEL=*) label=${arg#root=LABEL=} ;;
    rootflags=subvol=*) subvol=${arg#rootflags=subvol=} ;;
    docker_path=*) docker_path=${arg#docker_path=} ;;
    toplayer_path=*) toplayer_path=${arg#toplayer_path=} ;;
    esac
done

# Wait for the disk (no udev: ask findfs until the label shows up).
tries=0
until dev=$(findfs "LABEL=$label" 2>/dev/null); do
    tries=$((tries + 1))
    [ $tries -gt 3000 ] && { echo "bench-reference: no disk with label $label" >/dev/kmsg; exec sh; }
    usleep 10000
done

mkdir -p /mnt/top /new_root
mount -t btrfs -o subvolid=5 "$dev" /mnt/top

# The image: name and tag from the prior art's config.
conf=$(cat /etc/docker-btrfs.json)
name=$(echo "$conf" | sed -n 's/.*"docker_image"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
tag=$(echo "$conf" | sed -n 's/.*"docker_tag"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
store=/mnt/top/$docker_path
id=$(sed -n "s|.*\"$name:$tag\":\"sha256:\([0-9a-f]*\)\".*|\1|p" "$store/image/btrfs/repositories.json")
diffs=$(sed -n 's/.*"diff_ids":\[\([^]]*\)\].*/\1/p' "$store/image/btrfs/imagedb/content/sha256/$id" | tr ',' ' ' | tr -d '"')
chain=
for d in $diffs; do
    if [ -z "$chain" ]; then
        chain=$d
    else
        chain=sha256:$(printf '%s %s' "$chain" "$d" | sha256sum | cut -d' ' -f1)
    fi
done
cache_id=$(cat "$store/image/btrfs/layerdb/sha256/${chain#sha256:}/cache-id")
image=$store/btrfs/subvolumes/$cache_id

[ -d "/mnt/top/$subvol" ] && btrfs subvolume delete "/mnt/top/$subvol"
btrfs subvolume snapshot "$image" "/mnt/top/$subvol"
cp -a "/mnt/top/$toplayer_path/." "/mnt/top/$subvol/"
umount /mnt/top

mount -t btrfs -o "subvol=$subvol" "$dev" /new_root
mount --move /dev /new_root/dev
mount --move /proc /new_root/proc
mount --move /sys /new_root/sys
exec switch_root /new_root /sbin/init
