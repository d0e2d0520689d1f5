#!/bin/sh
# A user-data script that fails: kumo run reports it and exits with the script's status (3).
#   kumo run --image kumo-minimal --user-data examples/user-data/fails.sh; echo "status $?"
echo "checking for /etc/app.conf"
if [ ! -f /etc/app.conf ]; then
  echo "missing /etc/app.conf" >&2
  exit 3
fi
