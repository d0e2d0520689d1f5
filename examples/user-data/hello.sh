#!/bin/sh
# A user-data script: runs once, as root, at the instance's first boot, with its output on the
# console (and in /var/log/cloud-init-output.log). Try it:
#   kumo run --image kumo-minimal --user-data examples/user-data/hello.sh
# Its exit status is kumo run's.
set -e

# The instance metadata service, as on EC2 (IMDSv1 here for brevity; the agent itself uses v2).
md() { wget -qO- "http://169.254.169.254/latest/meta-data/$1" 2>/dev/null || curl -fsS "http://169.254.169.254/latest/meta-data/$1"; }

echo "hello from $(hostname)"
echo "  instance $(md instance-id), a $(md instance-type) in $(md placement/availability-zone)"
echo "  private IP $(md local-ipv4), launched from $(md ami-id)"
echo "  kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPU(s) visible"
