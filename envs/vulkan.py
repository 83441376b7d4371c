"""Check, in a subprocess, that SAPIEN finds a Vulkan render device; and find SAPIEN's PhysX GPU library.

Every ManiSkill3 env needs a Vulkan device, even in state mode. Without a usable
one SAPIEN either raises ("Failed to find a supported physical device"),
segfaults or hangs, so the probe runs in a child process with a timeout and the
parent gets a clear, actionable error instead of a crash. The result is cached
per process (and the check can be skipped with ``VLA_FORGET_SKIP_VULKAN_CHECK=1``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

from vla_forget.errors import VlaForgetError

SKIP_ENV = "VLA_FORGET_SKIP_VULKAN_CHECK"

_PROBE = r"""
import sapien
dev = sapien.render.get_device_summary() if hasattr(sapien.render, "get_device_summary") else ""
# Creating a render system is what ManiSkill does first; it fails without a device.
sapien.render.RenderSystem()
print("VULKAN_OK")
print(dev)
"""

_HELP = """\
ManiSkill3 (SAPIEN) needs a Vulkan device, even without cameras.
- Machines without a GPU: install the Vulkan loader and Mesa >= 25 (lavapipe,
  software Vulkan). On Debian 12 run `make system`, or by hand:
    apt-get install libvulkan1
    apt-get install -t bookworm-backports mesa-vulkan-drivers   (Mesa 22.3 from bookworm is rejected)
- GPU machines: the NVIDIA driver's Vulkan ICD (libnvidia-gl / nvidia_icd.json
  under /usr/share/vulkan/icd.d) and libvulkan1.
Set {skip}=1 to skip this check."""


class VulkanUnavailableError(VlaForgetError, RuntimeError):
    """No Vulkan device SAPIEN can use; the message says how to install one."""


_cached: Optional[str] = None  # the device summary after a successful probe
_cached_error: Optional[str] = None


def check_vulkan(timeout: float = 60.0) -> str:
    """Return a short summary of the render device, or raise :class:`VulkanUnavailableError`."""
    global _cached, _cached_error
    if os.environ.get(SKIP_ENV) == "1":
        return "skipped"
    if _cached is not None:
        return _cached
    if _cached_error is not None:
        raise VulkanUnavailableError(_cached_error)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout
        )
        ok = proc.returncode == 0 and "VULKAN_OK" in proc.stdout
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        why = f"probe exited with code {proc.returncode}: " + " | ".join(detail)
    except subprocess.TimeoutExpired:
        ok, why = False, f"probe hung for more than {timeout:.0f} s"
    if ok:
        _cached = " ".join(proc.stdout.split("VULKAN_OK", 1)[1].split()) or "ok"
        return _cached
    _cached_error = f"no usable Vulkan device for SAPIEN ({why}).\n" + _HELP.format(skip=SKIP_ENV)
    raise VulkanUnavailableError(_cached_error)


# --- ManiSkill's GPU physics: SAPIEN's PhysX GPU library ------------------------------------------------
PHYSX_URL = "https://github.com/sapien-sim/physx-precompiled/releases/download/{version}/linux-so.zip"


class PhysxGpuUnavailableError(VlaForgetError, RuntimeError):
    """GPU physics was asked for, but SAPIEN's PhysX GPU library is missing and could not be fetched."""


def physx_gpu_library() -> "tuple[str, str]":
    """(path, download URL) of the PhysX GPU library that SAPIEN loads for ManiSkill's GPU physics.

    SAPIEN does not ship it in its wheel: on the first GPU-physics env it downloads
    ``libPhysXGpu_64.so`` into ``~/.sapien/physx/VERSION/``. On a machine without
    internet access, put it there by hand (unzip the URL's archive into that folder).
    """
    import sapien

    version = sapien.physx.version()
    folder = os.path.join(os.path.expanduser("~"), ".sapien", "physx", version)
    return os.path.join(folder, "libPhysXGpu_64.so"), PHYSX_URL.format(version=version)


def check_physx_gpu() -> str:
    """Make sure GPU physics can start; return the library's path or raise :class:`PhysxGpuUnavailableError`.

    Where the library is missing, SAPIEN's own download is tried once (it needs the
    internet); if that fails, the error says where to put the file by hand.
    """
    path, url = physx_gpu_library()
    if os.path.exists(path):
        return path
    try:
        import sapien

        sapien.physx.enable_gpu()  # downloads the library into place
    except Exception as e:  # offline: requests' connection error, a bad zip, ...
        raise PhysxGpuUnavailableError(
            f"GPU physics needs SAPIEN's PhysX GPU library {path}, which is not there and could not be "
            f"downloaded ({type(e).__name__}: {e}). On a machine with internet access, fetch {url}, then unzip "
            f"it into {os.path.dirname(path)} on this machine; or run with the CPU simulator "
            "(--num-envs 1: one env per process, parallel through --workers)."
        ) from None
    return path
