"""Check, in a subprocess, that SAPIEN finds a Vulkan render device.

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


class VulkanUnavailableError(RuntimeError):
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
