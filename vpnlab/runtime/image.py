"""The node image (vpnlab/runtime/images): its name, and building it through the Docker SDK.

The tag is a digest of the image's files, so a changed Dockerfile or entry point is a
new image and a stale one is never used by mistake.

    vpnlab image build                    # build it unless it exists (make image)
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from vpnlab.errors import RuntimeFailure

IMAGES_DIR = Path(__file__).resolve().parent / "images"
REPOSITORY = "vpnlab/node"
CONTEXT_FILES = ("Dockerfile", "vpnlab-node")


def node_image() -> str:
    digest = hashlib.sha256()
    for name in CONTEXT_FILES:
        digest.update(name.encode() + b"\0" + (IMAGES_DIR / name).read_bytes())
    return f"{REPOSITORY}:{digest.hexdigest()[:12]}"


def base_image() -> str:
    """The FROM of the Dockerfile (its BASE argument's default)."""
    for line in (IMAGES_DIR / "Dockerfile").read_text().splitlines():
        if line.startswith("ARG BASE="):
            return line.split("=", 1)[1].strip()
    raise RuntimeFailure(f"{IMAGES_DIR / 'Dockerfile'}: no 'ARG BASE=' line")


def client():
    try:
        import docker  # the docker extra: the netns runtime does not need it
    except ImportError:
        raise RuntimeFailure("the docker runtime needs the Docker SDK: pip install 'vpnlab[docker]'") from None
    try:
        c = docker.from_env(timeout=120)
        c.ping()
        return c
    except Exception as err:
        raise RuntimeFailure(f"the Docker engine does not answer ({err}); start dockerd "
                             "('make docker-engine' starts one without systemd)") from None


def has_image(c, tag: str) -> bool:
    import docker
    try:
        c.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build(progress=print) -> str:
    """Build the node image unless it exists, and its base first unless that exists
    (pulled, or where no registry can be reached made with debootstrap: base-image.sh).
    RUN steps use the host's network: the engine may run without a bridge
    (dockerd --bridge=none)."""
    c = client()
    tag = node_image()
    if has_image(c, tag):
        progress(f"{tag} is there")
        return tag
    if not has_image(c, base_image()):
        progress(f"making the base image {base_image()}")
        made = subprocess.run(["bash", str(IMAGES_DIR / "base-image.sh"), base_image()],
                              capture_output=True, text=True)
        if made.returncode != 0 or not has_image(c, base_image()):
            raise RuntimeFailure(f"base image {base_image()} could not be made "
                                 f"({IMAGES_DIR / 'base-image.sh'}): {(made.stdout + made.stderr)[-1500:]}")
    progress(f"building {tag} from {IMAGES_DIR}")
    try:
        c.images.build(path=str(IMAGES_DIR), tag=tag, network_mode="host", rm=True,
                       forcerm=True, labels={"io.vpnlab.image": "node"})
    except Exception as err:    # BuildError carries the log
        log = "".join(x.get("stream", "") for x in getattr(err, "build_log", []) or [])
        raise RuntimeFailure(f"building {tag} failed: {err}\n{log[-2000:]}") from None
    c.images.get(tag).tag(REPOSITORY, "latest")
    progress(f"built {tag}")
    _remove_older(c, tag)
    return tag


def _remove_older(c, current: str):
    """Earlier builds of the node image, unless a container still uses them."""
    import docker
    for img in c.images.list(name=REPOSITORY):
        for old in img.tags:
            if old not in (current, f"{REPOSITORY}:latest"):
                try:
                    c.images.remove(old)
                except docker.errors.APIError:
                    pass             # in use by a lab that is up


if __name__ == "__main__":
    try:
        build()
    except RuntimeFailure as err:
        sys.exit(f"vpnlab: {err}")
