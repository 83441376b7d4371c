"""Preflight of SimplerEnv's interpreter: what would make a Google-robot task fail late, hang or run wrong.

The Google-robot tasks run SimplerEnv (SAPIEN 2.2) in a worker process of its own
interpreter (:class:`vla_forget.envs.simpler.SimplerWorker`). Three things there
fail only at the first reset, or never visibly, so they are checked once per
interpreter before any episode (:func:`preflight_error`, called by
:func:`vla_forget.envs.simpler.unavailable_reason`) and reported by
``vla-forget doctor`` (:func:`doctor_report`):

* **Vulkan device extensions.** SAPIEN 2 creates its Vulkan device with
  ``VK_KHR_external_semaphore_fd`` and ``VK_KHR_external_fence_fd`` (for CUDA
  interop). Software Vulkan (Mesa's lavapipe) may lack them; the first reset then
  fails with ``ErrorExtensionNotPresent``. The probe lists the devices and their
  extensions through the Vulkan loader (ctypes, what SAPIEN sees, implicit layers
  included); where no device has both, it asks SAPIEN 2 to create its renderer,
  which decides (a layer may strip them from the device's creation).
* **Ray tracing on a CPU renderer.** The drawer tasks render with SimplerEnv's
  ray-traced shader (``shader_dir=rt``), which never returns a frame on a CPU
  Vulkan device: the bench would hang at the first image. They are refused
  where the only usable device is a CPU one. SimplerEnv has no rasterised
  variant matching its published drawer set-up, so none is substituted.
* **numpy 2.** SimplerEnv's SAPIEN 2 stack with numpy >= 2 silently corrupts
  the robot's joint positions (objects fall through the table); refused.

``VLA_FORGET_SKIP_SIMPLER_PREFLIGHT=1`` skips the two Vulkan checks (not numpy's).
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Dict, List, Optional, Tuple

SKIP_ENV = "VLA_FORGET_SKIP_SIMPLER_PREFLIGHT"
#: the device extensions SAPIEN 2 enables when it creates its Vulkan device
REQUIRED_EXTENSIONS = ("VK_KHR_external_semaphore_fd", "VK_KHR_external_fence_fd")
DEVICE_TYPES = {0: "other", 1: "integrated GPU", 2: "discrete GPU", 3: "virtual GPU", 4: "CPU"}
CPU = 4

VULKAN_REMEDY = (
    "Give SimplerEnv's interpreter a Vulkan driver whose device has both extensions: a GPU's own Vulkan driver (e.g. "
    "the NVIDIA driver's ICD; VK_ICD_FILENAMES selects it), or, for a software device without them, a Vulkan layer "
    "that removes these two extensions from the list SAPIEN asks for when it creates the device (SAPIEN uses them "
    f"only to share memory with CUDA). {SKIP_ENV}=1 skips this check")
RT_REMEDY = (
    "SimplerEnv renders the drawer tasks with its ray-traced shader (shader_dir=rt), which never returns a frame on a "
    "CPU Vulkan device (the bench would wait forever at the first image). Run them where a GPU with ray tracing "
    "(an RTX-class NVIDIA GPU) is SAPIEN's device; SimplerEnv has no rasterised variant of its drawer set-up")
NUMPY_REMEDY = (
    "SimplerEnv's SAPIEN 2 stack with numpy >= 2 silently corrupts the robot's joint positions (the can falls "
    "through the table), so the episodes would be wrong without an error. Install SimplerEnv's pin in its "
    "interpreter: pip install numpy==1.24.4 (any numpy<2)")

#: run in SimplerEnv's interpreter: standard library (+ numpy, sapien when there); prints one JSON line
PROBE = r'''
import ctypes, json, sys
out = {"python": sys.version.split()[0]}
try:
    import numpy
    out["numpy"] = numpy.__version__
except Exception as e:
    out["numpy"] = None
try:
    import importlib.metadata as md
    out["sapien"] = md.version("sapien")
except Exception:
    out["sapien"] = None


def devices():
    from ctypes import POINTER, byref, c_char_p, c_int, c_uint32, c_void_p

    class AppInfo(ctypes.Structure):
        _fields_ = [("sType", c_int), ("pNext", c_void_p), ("pApplicationName", c_char_p),
                    ("applicationVersion", c_uint32), ("pEngineName", c_char_p), ("engineVersion", c_uint32),
                    ("apiVersion", c_uint32)]

    class InstanceInfo(ctypes.Structure):
        _fields_ = [("sType", c_int), ("pNext", c_void_p), ("flags", c_uint32), ("pApplicationInfo", POINTER(AppInfo)),
                    ("enabledLayerCount", c_uint32), ("ppEnabledLayerNames", c_void_p),
                    ("enabledExtensionCount", c_uint32), ("ppEnabledExtensionNames", c_void_p)]

    vk = ctypes.CDLL("libvulkan.so.1")
    vk.vkCreateInstance.argtypes = [c_void_p, c_void_p, c_void_p]
    vk.vkEnumeratePhysicalDevices.argtypes = [c_void_p, c_void_p, c_void_p]
    vk.vkGetPhysicalDeviceProperties.argtypes = [c_void_p, c_void_p]
    vk.vkEnumerateDeviceExtensionProperties.argtypes = [c_void_p, c_char_p, c_void_p, c_void_p]
    vk.vkDestroyInstance.argtypes = [c_void_p, c_void_p]
    app = AppInfo(0, None, b"vla-forget-preflight", 0, None, 0, 1 << 22)  # VK_STRUCTURE_TYPE_APPLICATION_INFO, 1.0
    info = InstanceInfo(1, None, 0, ctypes.pointer(app), 0, None, 0, None)  # VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO
    inst = c_void_p()
    r = vk.vkCreateInstance(byref(info), None, byref(inst))
    if r != 0:
        raise RuntimeError("vkCreateInstance returned %d" % r)
    try:
        n = c_uint32()
        vk.vkEnumeratePhysicalDevices(inst, byref(n), None)
        handles = (c_void_p * n.value)()
        vk.vkEnumeratePhysicalDevices(inst, byref(n), handles)
        found = []
        for h in handles[:n.value]:
            props = ctypes.create_string_buffer(4096)  # VkPhysicalDeviceProperties (< 1 kB)
            vk.vkGetPhysicalDeviceProperties(h, props)
            dtype = int.from_bytes(props.raw[16:20], "little")
            name = props.raw[20:276].split(b"\0")[0].decode(errors="replace")
            m = c_uint32()
            vk.vkEnumerateDeviceExtensionProperties(h, None, byref(m), None)
            buf = ctypes.create_string_buffer(260 * max(1, m.value))  # VkExtensionProperties: char[256], uint32
            vk.vkEnumerateDeviceExtensionProperties(h, None, byref(m), buf)
            exts = [buf.raw[i * 260:i * 260 + 256].split(b"\0")[0].decode() for i in range(m.value)]
            found.append({"name": name, "type": dtype, "extensions": exts})
        return found
    finally:
        vk.vkDestroyInstance(inst, None)


try:
    out["vulkan"] = {"devices": devices()}
except Exception as e:
    out["vulkan"] = {"error": "%s: %s" % (type(e).__name__, e)}
if "--renderer" in sys.argv and not str(out["sapien"]).startswith("2."):
    out["renderer"] = {"ok": False, "error": "SAPIEN 2 is not installed (sapien %s)" % out["sapien"]}
elif "--renderer" in sys.argv:
    try:
        import sapien.core as sapien

        sapien.SapienRenderer(offscreen_only=True)
        out["renderer"] = {"ok": True}
    except Exception as e:
        out["renderer"] = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
print("VLAF_PREFLIGHT " + json.dumps(out))
'''

#: each interpreter's probe result, once per process (tests reset it)
PROBES: Dict[str, Dict[str, Any]] = {}


def run_probe(python: str, renderer: bool = False, timeout: float = 180.0) -> Dict[str, Any]:
    """Run :data:`PROBE` in ``python`` (with this process's environment, as the worker); its report, or
    ``{"error": ...}`` when it did not finish."""
    cmd = [python, "-c", PROBE] + (["--renderer"] if renderer else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"the probe hung for more than {timeout:.0f} s" + (" creating SAPIEN's renderer" if renderer else "")}
    except OSError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    for line in r.stdout.splitlines():
        if line.startswith("VLAF_PREFLIGHT "):
            return json.loads(line[len("VLAF_PREFLIGHT "):])
    tail = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
    return {"error": f"the probe exited with code {r.returncode}: {tail}"}


def probe(python: Optional[str] = None) -> Dict[str, Any]:
    """The interpreter's report (numpy, sapien, Vulkan devices, and SAPIEN's renderer where the extensions are
    missing), cached per interpreter."""
    from vla_forget.envs.simpler import simpler_python

    python = python or simpler_python()
    key = os.path.realpath(python) if os.path.exists(python) else python
    if key not in PROBES:
        report = run_probe(python)
        if "error" not in report and not _extension_devices(report):
            report["renderer"] = run_probe(python, renderer=True).get("renderer") or {"ok": False, "error": "no report"}
        PROBES[key] = report
    return PROBES[key]


def _extension_devices(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    devices = (report.get("vulkan") or {}).get("devices") or []
    return [d for d in devices if all(e in d["extensions"] for e in REQUIRED_EXTENSIONS)]


def _describe(d: Dict[str, Any]) -> str:
    return f"{d['name']} ({DEVICE_TYPES.get(d['type'], d['type'])})"


# --------------------------------------------------------------------------
# the three checks: (ok, detail); ok None = could not tell
# --------------------------------------------------------------------------
def check_vulkan(report: Dict[str, Any]) -> Tuple[Optional[bool], str]:
    if os.environ.get(SKIP_ENV) == "1":
        return None, f"skipped ({SKIP_ENV}=1)"
    good = _extension_devices(report)
    if good:
        return True, "device " + ", ".join(_describe(d) for d in good) + " has " + " and ".join(REQUIRED_EXTENSIONS)
    vulkan = report.get("vulkan") or {}
    if "error" in vulkan:
        seen = f"the Vulkan loader could not list devices ({vulkan['error']})"
    else:
        devices = vulkan.get("devices") or []
        seen = ("no Vulkan device" if not devices else "; ".join(
            f"{_describe(d)} lacks " + ", ".join(e for e in REQUIRED_EXTENSIONS if e not in d["extensions"])
            for d in devices))
    renderer = report.get("renderer") or {}
    if renderer.get("ok"):
        return True, f"{seen}, but SAPIEN's renderer starts (a layer or driver provides for them)"
    why = renderer.get("error") or "SAPIEN 2 was not asked"
    return False, (f"SAPIEN 2 needs the Vulkan device extensions {' and '.join(REQUIRED_EXTENSIONS)}: {seen}; "
                   f"creating SAPIEN's renderer failed ({why}), so the first reset would fail with "
                   f"ErrorExtensionNotPresent. {VULKAN_REMEDY}")


def renderer_device(report: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The device SAPIEN would render on: a GPU among the usable devices first (None: cannot tell)."""
    devices = _extension_devices(report) or (report.get("vulkan") or {}).get("devices") or []
    gpus = [d for d in devices if d["type"] != CPU]
    return (gpus or devices or [None])[0]


def check_ray_tracing(report: Dict[str, Any]) -> Tuple[Optional[bool], str]:
    if os.environ.get(SKIP_ENV) == "1":
        return None, f"skipped ({SKIP_ENV}=1)"
    d = renderer_device(report)
    if d is None:
        return None, "no Vulkan device listed: cannot tell whether SAPIEN renders on a CPU"
    if d["type"] == CPU:
        return False, f"SAPIEN's only Vulkan device is a CPU renderer, {_describe(d)}. {RT_REMEDY}"
    return True, f"renders on {_describe(d)}"


def check_numpy(report: Dict[str, Any]) -> Tuple[Optional[bool], str]:
    v = report.get("numpy")
    if not v:
        return False, "numpy is not importable in SimplerEnv's interpreter (SimplerEnv needs numpy<2: numpy==1.24.4)"
    try:
        major = int(str(v).split(".")[0])
    except ValueError:
        return None, f"numpy {v}: version not understood"
    if major >= 2:
        return False, f"numpy {v} in SimplerEnv's interpreter. {NUMPY_REMEDY}"
    return True, f"numpy {v}"


def _uses_ray_tracing(task_id: str) -> bool:
    from vla_forget.envs.simpler_tasks import SIMPLER_TASKS

    return (SIMPLER_TASKS[task_id]["sim"].get("extra") or {}).get("shader_dir") == "rt"


def preflight_error(task_id: str, python: Optional[str] = None) -> Optional[str]:
    """None if SimplerEnv's interpreter can run ``task_id``'s episodes correctly, else why not and what to do."""
    from vla_forget.envs.simpler import simpler_python

    python = python or simpler_python()
    report = probe(python)
    if "error" in report:
        return f"{task_id}: the preflight of SimplerEnv's interpreter {python} failed: {report['error']}"
    checks = [check_numpy(report), check_vulkan(report)]
    if _uses_ray_tracing(task_id):
        checks.append(check_ray_tracing(report))
    for ok, detail in checks:
        if ok is False:
            return f"{task_id} cannot run in SimplerEnv's interpreter {python}: {detail}"
    return None


def doctor_report(python: Optional[str] = None) -> Tuple[List[str], bool]:
    """``vla-forget doctor``'s SimplerEnv lines and whether all is well (an interpreter without SimplerEnv is
    reported, not a failure: the Google-robot tasks are an optional install)."""
    from vla_forget.envs.simpler import SIMPLER_PYTHON_ENV, probe_simpler_python, simpler_python

    python = python or simpler_python()
    why = probe_simpler_python(python)
    if why:
        return [f"{'simpler_env':>20}: not installed in {python} ({why}); the Google-robot tasks need it "
                f"({SIMPLER_PYTHON_ENV})"], True
    report = probe(python)
    if "error" in report:
        return [f"{'simpler preflight':>20}: FAILED in {python}: {report['error']}"], False
    lines = [f"{'simpler_env':>20}: {python} (sapien {report.get('sapien')}, numpy {report.get('numpy')})"]
    ok_all = True
    for name, (ok, detail) in (("simpler vulkan", check_vulkan(report)),
                               ("simpler drawers (rt)", check_ray_tracing(report)),
                               ("simpler numpy", check_numpy(report))):
        drawers_only = name.startswith("simpler drawers")  # the other Google-robot tasks still run
        state = {True: "ok", None: "unknown", False: "UNAVAILABLE" if drawers_only else "FAILED"}[ok]
        lines.append(f"{name:>20}: {state}: {detail}")
        ok_all = ok_all and (ok is not False or drawers_only)
    return lines, ok_all
