"""cloud-init's own EC2 code reading kumo's metadata service (driven by net/tests/imds_e2e.rs).

Runs inside the test's network namespace with PYTHONPATH pointing at an unpacked (never
installed) Debian cloud-init package. Prints one JSON object with what cloud-init saw:

* "helpers": cloudinit.sources.helpers.ec2 (get_instance_metadata, get_instance_userdata,
  get_instance_identity) as IMDSv1, the way older datasources and tools call them;
* "datasource": DataSourceEc2 itself (platform forced to AWS, so it takes the IMDSv2 token path
  exactly as on EC2: PUT /latest/api/token, then every GET with the token): its crawl,
  user-data, identity document, instance id, AZ, region, keys, hostname and network config.

Usage: imds_cloud_init.py WORKDIR
"""

import json
import logging
import sys
import time


def text(data):
    """User-data as text: cloud-init returns bytes, or "" when it could not fetch any."""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data or ""


def main():
    workdir = sys.argv[1]
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)

    from cloudinit import distros, helpers
    from cloudinit.sources import DataSourceEc2
    from cloudinit.sources.helpers import ec2

    base = "http://169.254.169.254"
    result = {}

    started = time.monotonic()
    result["helpers"] = {
        "meta-data": ec2.get_instance_metadata("latest", base, timeout=5, retries=1),
        "user-data": text(ec2.get_instance_userdata("latest", base, timeout=5, retries=1)),
        "identity": ec2.get_instance_identity("latest", base, timeout=5, retries=1),
    }

    result["helpers_seconds"] = round(time.monotonic() - started, 3)

    started = time.monotonic()
    paths = helpers.Paths({"cloud_dir": workdir + "/cloud", "run_dir": workdir + "/run"})
    sys_cfg = {
        "datasource": {
            "Ec2": {
                "metadata_urls": [base],
                "timeout": 5,
                "max_wait": 30,
            }
        }
    }
    distro = distros.fetch("debian")("debian", {}, paths)
    ds = DataSourceEc2.DataSourceEc2(sys_cfg, distro, paths)
    # The platform check reads DMI (an EC2 system UUID); this host is not EC2, so say it is,
    # which makes the datasource use IMDSv2 tokens as it does on AWS.
    ds._cloud_name = DataSourceEc2.CloudNames.AWS
    found = ds.get_data()
    result["datasource"] = {
        "found": found,
        "api_version": (ds._crawled_metadata or {}).get("_metadata_api_version"),
        "token_used": bool(ds._api_token),
        "meta-data": ds.metadata,
        "user-data": text(ds.userdata_raw),
        "identity": ds.identity,
        "instance_id": ds.get_instance_id() if found else None,
        "availability_zone": ds.availability_zone if found else None,
        "region": ds.region if found else None,
        "public_keys": ds.get_public_ssh_keys() if found else None,
        "hostname": ds.get_hostname().hostname if found else None,
        "network_config": ds.network_config if found else None,
    }
    result["datasource_seconds"] = round(time.monotonic() - started, 3)
    json.dump(result, sys.stdout, default=str)


if __name__ == "__main__":
    main()
