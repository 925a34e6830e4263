#!/usr/bin/env bash
# Set up everything cosfs needs on Debian 12 (run as root): system packages,
# a virtual environment in .venv with cosfs and its test extras installed.
# Idempotent: packages already present are not fetched again.
#
# --test also installs what only the tests drive: headless Chromium and its driver
# (the console's browser test), rclone and s3fs-fuse (clients of the XML API), stress-ng
# (its file system stressors run on a mount).
#
# --system also links the commands into the system, for /etc/fstab lines and the
# systemd unit (see "Running it for real" in README.md):
#   /sbin/mount.fuse.cosfs, /sbin/umount.fuse.cosfs   (mount(8) looks only in /sbin)
#   /usr/local/bin/cosfs
# Nothing outside this checkout is touched without it; existing files that are not
# links into this checkout are never replaced.
set -euo pipefail
cd "$(dirname "$0")/.."

system=0
test=0
for arg in "$@"; do
  case "$arg" in
    --system) system=1 ;;
    --test) test=1 ;;
    *) echo "usage: $0 [--system] [--test]" >&2; exit 2 ;;
  esac
done

packages=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv attr rsync git tar
          sqlite3 procps psmisc)
if [ "$test" = 1 ]; then
  packages+=(chromium chromium-driver rclone s3fs stress-ng)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ]; then
  echo "warning: /dev/fuse is missing; mounting will not work here" >&2
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
echo "cosfs is installed in $(pwd)/.venv (run .venv/bin/cosfs)"

link() {  # link TARGET NAME: make NAME a symbolic link to TARGET, never replacing a stranger
  if [ -L "$2" ] && [ "$(readlink -f "$2")" = "$(readlink -f "$1")" ]; then
    return
  fi
  if [ -e "$2" ] || [ -L "$2" ]; then
    echo "warning: $2 exists and is not a link to $1; left as it is" >&2
    return
  fi
  ln -s "$1" "$2"
  echo "linked $2 -> $1"
}
if [ "$system" = 1 ]; then
  link "$(pwd)/.venv/bin/mount.fuse.cosfs" /sbin/mount.fuse.cosfs
  link "$(pwd)/.venv/bin/umount.fuse.cosfs" /sbin/umount.fuse.cosfs
  link "$(pwd)/.venv/bin/cosfs" /usr/local/bin/cosfs
else
  echo "for /etc/fstab and systemd: contrib/install.sh --system (links the mount helpers into /sbin)"
fi
