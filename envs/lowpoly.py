"""Low-poly Panda visuals for the v2 tabletop tasks: how the meshes are made, where they are, how they are checked.

On the CPU renderer a control step is ~90% rendering, and rendering cost follows the triangles drawn: the
Panda that ManiSkill3 3.0.1 loads (``panda_v2.urdf``, ten GLB visual meshes) draws 135,548 triangles, 86-87%
of every tabletop scene, and the 100 m ground adds 20,000 more. The v2 tasks (``PickCube-v2`` ...) load a
copy of that robot whose visual meshes are simplified to ~10% of their triangles, and a 20 m ground.

The mesh set (``assets/panda_lowpoly``, shipped) is made from the installed ManiSkill's Panda assets by
``python -m vla_forget.envs.lowpoly`` (needs the ``lowpoly`` extra, ``fast-simplification``):

* every visual GLB referenced by ``panda_v2.urdf`` is simplified one primitive (one material) at a time, so
  colours stay: identical vertex positions are welded, the quadric-error decimation of
  ``fast-simplification`` keeps ``KEEP_RATIO`` of the triangles, and vertex normals are recomputed with a
  ``CREASE_DEG`` crease angle (faces meeting at a sharper angle get their own normals);
* primitives of fewer than ``MIN_TRIANGLES`` triangles (small decals) are kept as they are;
* ``finger.glb`` (the fingers and their pads) is copied at full detail: it fills the wrist camera's view;
* the collision meshes are copied byte for byte (the physics is unchanged), and so is ``panda_v2.srdf``,
  beside the new URDF: SAPIEN reads the collision-ignore pairs from the ``.srdf`` with the URDF's stem, and
  without them the motion drifts from the original's;
* the URDF is copied with its mesh paths unchanged (relative to the new folder, so they name the new files).

``manifest.json`` beside them lists each file's SHA-256, the triangle counts before and after, the
parameters and the sources' hashes; :data:`MESH_SET_SHA256` is the hash of the whole set (each file's path
and SHA-256), recorded in the results of every run that uses a v2 task. :func:`check_meshes` verifies the
set before a v2 env is made, naming the missing or changed file and how to restore it.

Importing this module is cheap (no ManiSkill, SAPIEN or torch).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import sys
from typing import Any, Dict, List, Optional, Tuple

from vla_forget.errors import VlaForgetError

#: The mesh set's name and the SHA-256 of its files (see :func:`mesh_set_hash`).
MESH_SET = "panda-lowpoly-v1"
MESH_SET_SHA256 = "480b1aa6c4761926003f8e93c766b28dbd8ca1a8bf127431eadad1c68fd74a88"
#: Share of each primitive's triangles kept, and the crease angle of the recomputed normals.
KEEP_RATIO = 0.1
CREASE_DEG = 30.0
#: Primitives with fewer triangles than this (small decals) are kept as they are.
MIN_TRIANGLES = 100
#: Visual meshes copied at full detail (the fingers and finger pads fill the wrist view).
FULL_DETAIL = ("finger.glb",)
SOURCE_URDF = "panda_v2.urdf"
URDF_NAME = "panda_v2_lowpoly.urdf"
MANIFEST = "manifest.json"
#: The ground of the v2 scenes, metres per side (ManiSkill's table scene builds 100 m).
FLOOR_WIDTH = 20
GENERATOR_CMD = "python -m vla_forget.envs.lowpoly"
#: The generator's pinned simplifier: another version may decimate differently (another hash).
SIMPLIFIER = ("fast-simplification", "0.2.0")

#: v1 ManiSkill env id -> the low-poly copy's id (registered by :mod:`vla_forget.envs.tasks.lowpoly`).
LOWPOLY_MS_IDS: Dict[str, str] = {
    "VLAF-PickCubeGoal-v1": "VLAF-PickCubeGoal-LowPoly-v1",
    "PushCube-v1": "VLAF-PushCube-LowPoly-v1",
    "PullCube-v1": "VLAF-PullCube-LowPoly-v1",
    "StackCube-v1": "VLAF-StackCube-LowPoly-v1",
    "PlaceSphere-v1": "VLAF-PlaceSphere-LowPoly-v1",
    "LiftPegUpright-v1": "VLAF-LiftPegUpright-LowPoly-v1",
    "VLAF-StackColorCube-v1": "VLAF-StackColorCube-LowPoly-v1",
    "VLAF-PlaceCubeOnTarget-v1": "VLAF-PlaceCubeOnTarget-LowPoly-v1",
}
#: The tabletop tasks that get a v2 (same instructions, seeds, experts; low-poly arm, 20 m ground).
V2_TASKS = ("PickCube", "PushCube", "PullCube", "StackCube", "PlaceSphere", "LiftPegUpright", "StackColorCube",
            "PlaceCubeOnTarget")


class LowPolyAssetsError(VlaForgetError, RuntimeError):
    """The low-poly mesh set is missing or differs from the recorded one."""


# --------------------------------------------------------------------------
# where things are

def mesh_dir() -> str:
    """The shipped mesh set (``assets/panda_lowpoly`` in the repository)."""
    spec = importlib.util.find_spec("vla_forget.assets")
    assert spec is not None and spec.submodule_search_locations
    return os.path.join(list(spec.submodule_search_locations)[0], "panda_lowpoly")


def urdf_path(directory: Optional[str] = None) -> str:
    return os.path.join(directory or mesh_dir(), URDF_NAME)


def source_dir() -> str:
    """The installed ManiSkill's Panda assets (the generator's input)."""
    spec = importlib.util.find_spec("mani_skill")
    if spec is None or not spec.submodule_search_locations:
        raise LowPolyAssetsError("ManiSkill (mani-skill==3.0.1) is not installed: the generator reads its Panda assets")
    return os.path.join(list(spec.submodule_search_locations)[0], "assets", "robots", "panda")


# --------------------------------------------------------------------------
# hashes and the check

def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def set_hash(file_hashes: Dict[str, str]) -> str:
    """SHA-256 over each file's relative path and SHA-256, in path order."""
    return hashlib.sha256("".join(f"{p}\t{h}\n" for p, h in sorted(file_hashes.items())).encode()).hexdigest()


def mesh_set_hash(directory: Optional[str] = None) -> str:
    """The hash of the set in ``directory`` (every file the manifest lists, hashed from disk)."""
    directory = directory or mesh_dir()
    files = _read_manifest(directory)["files"]
    return set_hash({rel: _sha256(os.path.join(directory, rel)) for rel in files})


def _fix(directory: str) -> str:
    return (f"restore the shipped files (git checkout -- assets/panda_lowpoly) or regenerate them with "
            f"`{GENERATOR_CMD} --out {directory}` (needs the lowpoly extra: pip install -e '.[lowpoly]')")


def _read_manifest(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise LowPolyAssetsError(f"the low-poly Panda meshes are missing: {path} not found; {_fix(directory)}")
    with open(path) as f:
        return json.load(f)


#: mesh folders already checked in this process, with the hash they had (tests reset it)
CHECKED: Dict[str, str] = {}


def check_meshes(directory: Optional[str] = None, expected: Optional[str] = None) -> str:
    """Verify the mesh set (every listed file present, each file's and the set's hash as recorded); return the
    set's hash. Raises :class:`LowPolyAssetsError` naming the file and the fix. Checked once per process."""
    directory = directory or mesh_dir()
    expected = expected or MESH_SET_SHA256
    if CHECKED.get(directory) == expected:
        return expected
    manifest = _read_manifest(directory)
    actual: Dict[str, str] = {}
    bad: List[str] = []
    for rel, want in manifest["files"].items():
        path = os.path.join(directory, rel)
        if not os.path.isfile(path):
            bad.append(f"{path} is missing")
            continue
        actual[rel] = _sha256(path)
        if actual[rel] != want:
            bad.append(f"{path} differs from the recorded file (sha256 {actual[rel][:12]}, recorded {want[:12]})")
    if bad:
        raise LowPolyAssetsError(f"the low-poly Panda meshes ({MESH_SET}) are not the recorded ones: "
                                 + "; ".join(bad) + f"; {_fix(directory)}")
    got = set_hash(actual)
    if got != expected:
        raise LowPolyAssetsError(f"the low-poly Panda mesh set in {directory} hashes to {got[:12]}, not the recorded "
                                 f"{expected[:12]} ({os.path.join(directory, MANIFEST)} lists other files than "
                                 f"vla_forget.envs.lowpoly.MESH_SET_SHA256 was made from); {_fix(directory)}")
    check_source(manifest)
    CHECKED[directory] = expected
    return got


def check_source(manifest: Dict[str, Any], src_dir: Optional[str] = None) -> None:
    """Verify that the installed ManiSkill's Panda is the one the set was made from (each source file's hash in
    the manifest). A v2 task is v1's task with v1's robot drawn from simplified copies of these files: if the
    installed robot changed (another ManiSkill version), v1 would load the new robot and v2 the old copy, and
    their physics and looks would no longer match."""
    src = manifest.get("source") or {}
    made_from = f"{src.get('package', 'mani-skill')}=={src.get('version', '?')}"
    try:
        src_dir = src_dir or source_dir()
    except LowPolyAssetsError as e:
        raise LowPolyAssetsError(f"the v2 tasks need ManiSkill's Panda to check their meshes against ({e}); "
                                 f"install {made_from} (pip install -c constraints.txt -e .)") from None
    bad: List[str] = []
    for rel, want in (src.get("files") or {}).items():
        path = os.path.join(src_dir, rel)
        if not os.path.isfile(path):
            bad.append(f"{rel} is missing")
        elif _sha256(path) != want:
            bad.append(f"{rel} differs")
    if bad:
        raise LowPolyAssetsError(
            f"the low-poly Panda ({MESH_SET}) was made from {made_from}'s Panda, and the installed ManiSkill's "
            f"({_version('mani-skill')}, {src_dir}) is another: {'; '.join(bad[:3])}"
            f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}. The v2 tasks would no longer have v1's physics "
            f"and looks on this version: install {made_from} (as constraints.txt pins it), or run the v1 tasks; "
            f"a mesh set regenerated from this version (`{GENERATOR_CMD} --out DIR`) is a new mesh set and needs "
            f"new task versions")


def unavailable_reason(task_id: str) -> Optional[str]:
    try:
        check_meshes()
    except LowPolyAssetsError as e:
        return f"{task_id}: {e}"
    return None


def asset_record() -> Dict[str, str]:
    """What results files record about a v2 task's visual assets."""
    return {"mesh_set": MESH_SET, "sha256": MESH_SET_SHA256, "floor_width_m": str(FLOOR_WIDTH)}


def task_visual_assets(task_ids) -> Dict[str, Dict[str, str]]:
    """``{task: {mesh_set, sha256, floor_width_m}}`` for the tasks of ``task_ids`` drawn from a recorded mesh set
    (the v2 tasks); results files record it beside the battery's task versions."""
    from vla_forget.envs import TASKS

    out = {}
    for t in dict.fromkeys(task_ids):
        record = TASKS.get(t).metadata.get("visual_assets") if t in TASKS else None
        if record:
            out[t] = dict(record)
    return out


def register_v2(tasks) -> None:
    """Register ``<Name>-v2`` beside each ``<Name>-v1`` of :data:`V2_TASKS` in the task registry: the same
    instruction, episode length, expert and seeds, the low-poly env, the mesh set recorded in the metadata."""
    for name in V2_TASKS:
        v1 = tasks.get(f"{name}-v1")
        kwargs = dict(v1.kwargs)
        kwargs["ms_id"] = LOWPOLY_MS_IDS[kwargs["ms_id"]]
        kwargs["ms_module"] = "vla_forget.envs.tasks.lowpoly"
        tasks.register(f"{name}-v2", v1.entry_point,
                       description=f"{v1.description} (v2: low-poly arm visuals, {FLOOR_WIDTH} m ground; "
                                   f"physics as v1)",
                       **kwargs, metadata={**v1.metadata, "visual_assets": asset_record()})


# --------------------------------------------------------------------------
# GLB (binary glTF 2.0) in and out: what ManiSkill's Panda meshes use (indexed triangles, POSITION + NORMAL)

_GLB_MAGIC, _JSON, _BIN = 0x46546C67, 0x4E4F534A, 0x004E4942
_DTYPES = {5126: ("<f4", 4), 5125: ("<u4", 4), 5123: ("<u2", 2), 5121: ("u1", 1)}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def read_glb(data: bytes) -> Tuple[Dict[str, Any], bytes]:
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != _GLB_MAGIC or version != 2:
        raise ValueError("not a binary glTF 2.0 file")
    off, gltf, binary = 12, None, b""
    while off < length:
        n, kind = struct.unpack_from("<II", data, off)
        chunk = data[off + 8: off + 8 + n]
        if kind == _JSON:
            gltf = json.loads(chunk.decode("utf-8"))
        elif kind == _BIN:
            binary = bytes(chunk)
        off += 8 + n
    if gltf is None:
        raise ValueError("GLB without a JSON chunk")
    return gltf, binary


def write_glb(gltf: Dict[str, Any], binary: bytes) -> bytes:
    js = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    binary = binary + b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    return (struct.pack("<III", _GLB_MAGIC, 2, total) + struct.pack("<II", len(js), _JSON) + js
            + struct.pack("<II", len(binary), _BIN) + binary)


def _accessor(gltf: Dict[str, Any], binary: bytes, index: int):
    import numpy as np

    acc = gltf["accessors"][index]
    view = gltf["bufferViews"][acc["bufferView"]]
    dtype, size = _DTYPES[acc["componentType"]]
    width = _WIDTH[acc["type"]]
    if view.get("byteStride", size * width) != size * width or acc.get("sparse"):
        raise ValueError("interleaved or sparse glTF accessors are not supported")
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    arr = np.frombuffer(binary, dtype=dtype, count=acc["count"] * width, offset=start)
    return arr.reshape(acc["count"], width) if width > 1 else arr


def glb_triangles(path: str) -> List[int]:
    """Triangles of each primitive of a GLB, in file order."""
    with open(path, "rb") as f:
        gltf, _ = read_glb(f.read())
    out = []
    for mesh in gltf["meshes"]:
        for prim in mesh["primitives"]:
            if prim.get("mode", 4) != 4:
                raise ValueError(f"{path}: only triangle primitives are supported")
            n = gltf["accessors"][prim["indices"]]["count"] if "indices" in prim else \
                gltf["accessors"][prim["attributes"]["POSITION"]]["count"]
            out.append(n // 3)
    return out


# --------------------------------------------------------------------------
# simplification

def _weld(points, faces):
    """Merge vertices at identical positions; drop faces that collapse."""
    import numpy as np

    verts, inverse = np.unique(points, axis=0, return_inverse=True)
    f = inverse.reshape(-1)[faces]
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    return verts, f[keep]


def _crease_normals(verts, faces, crease_deg: float):
    """Split vertices where faces meet at more than ``crease_deg``; each corner's normal is the area-weighted
    mean of the normals of the faces round its vertex within the crease angle of its own face.
    Returns (positions float32 [V,3], normals float32 [V,3], faces uint32 [F,3])."""
    import numpy as np

    v = verts.astype(np.float64)
    cross = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    area2 = np.linalg.norm(cross, axis=1)
    keep = area2 > 1e-14
    faces, cross, area2 = faces[keep], cross[keep], area2[keep]
    unit = cross / area2[:, None]
    corner_v = faces.reshape(-1)
    corner_f = np.repeat(np.arange(len(faces)), 3)
    order = np.argsort(corner_v, kind="stable")
    bounds = np.flatnonzero(np.diff(corner_v[order])) + 1
    cos_t = np.cos(np.radians(crease_deg))
    normals = np.zeros((len(corner_v), 3))
    for group in np.split(order, bounds):
        fs = corner_f[group]
        u = unit[fs]
        near = (u @ u.T) >= cos_t
        n = near.astype(np.float64) @ cross[fs]
        normals[group] = n / np.linalg.norm(n, axis=1, keepdims=True)
    normals = normals.astype(np.float32)
    key = np.concatenate([corner_v[:, None].astype(np.float64), normals.astype(np.float64)], axis=1)
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)
    idx = uniq[:, 0].astype(np.int64)
    return (verts[idx].astype(np.float32), uniq[:, 1:].astype(np.float32),
            inverse.reshape(-1, 3).astype(np.uint32))


def simplify_primitive(points, faces, keep_ratio: float = KEEP_RATIO, crease_deg: float = CREASE_DEG):
    """One primitive: weld, decimate to ``keep_ratio`` of its triangles, recompute normals."""
    import fast_simplification
    import numpy as np

    verts, f = _weld(np.asarray(points, dtype=np.float32), np.asarray(faces, dtype=np.int64))
    target = max(4, int(round(len(f) * keep_ratio)))
    new_v, new_f = fast_simplification.simplify(verts.astype(np.float64), f.astype(np.int32), target_count=target)
    return _crease_normals(np.asarray(new_v), np.asarray(new_f, dtype=np.int64), crease_deg)


def simplify_glb(data: bytes, keep_ratio: float = KEEP_RATIO, crease_deg: float = CREASE_DEG) -> bytes:
    """A GLB with each triangle primitive simplified (its material kept); other glTF content is kept as is."""
    import numpy as np

    gltf, binary = read_glb(data)
    out = {k: v for k, v in gltf.items() if k not in ("accessors", "bufferViews", "buffers")}
    out["asset"] = dict(gltf.get("asset", {}))
    out["asset"]["generator"] = (f"vla-forget {MESH_SET} ({SIMPLIFIER[0]} {SIMPLIFIER[1]}, keep {keep_ratio}, "
                                 f"crease {crease_deg} deg) from: {gltf.get('asset', {}).get('generator', '?')}")
    accessors: List[Dict[str, Any]] = []
    views: List[Dict[str, Any]] = []
    chunks: List[bytes] = []
    offset = 0

    def add(arr, acc_type: str, component: int, target: int, minmax: bool) -> int:
        nonlocal offset
        raw = arr.tobytes()
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(raw), "target": target})
        pad = -len(raw) % 4
        chunks.append(raw + b"\0" * pad)
        offset += len(raw) + pad
        acc = {"bufferView": len(views) - 1, "componentType": component, "count": int(arr.shape[0]), "type": acc_type}
        if minmax:
            acc["min"] = [float(x) for x in arr.min(axis=0)]
            acc["max"] = [float(x) for x in arr.max(axis=0)]
        accessors.append(acc)
        return len(accessors) - 1

    meshes = []
    for mesh in gltf["meshes"]:
        prims = []
        for prim in mesh["primitives"]:
            if prim.get("mode", 4) != 4 or "indices" not in prim or set(prim["attributes"]) - {"POSITION", "NORMAL"}:
                raise ValueError("only indexed triangle primitives with POSITION and NORMAL are supported")
            pos = _accessor(gltf, binary, prim["attributes"]["POSITION"])
            faces = _accessor(gltf, binary, prim["indices"]).reshape(-1, 3)
            if len(faces) < MIN_TRIANGLES:
                v = np.asarray(pos, dtype=np.float32)
                n = np.asarray(_accessor(gltf, binary, prim["attributes"]["NORMAL"]), dtype=np.float32)
                f = np.asarray(faces, dtype=np.uint32)
            else:
                v, n, f = simplify_primitive(pos, faces, keep_ratio, crease_deg)
            index = f.astype(np.uint16) if len(v) < 65536 else f
            new = {k: val for k, val in prim.items() if k not in ("attributes", "indices")}
            new["attributes"] = {"POSITION": add(v, "VEC3", 5126, 34962, True), "NORMAL": add(n, "VEC3", 5126, 34962, False)}
            new["indices"] = add(index.reshape(-1), "SCALAR", 5123 if index.dtype == np.uint16 else 5125, 34963, False)
            prims.append(new)
        meshes.append({**mesh, "primitives": prims})
    out["meshes"] = meshes
    out["accessors"], out["bufferViews"], out["buffers"] = accessors, views, [{"byteLength": offset}]
    return write_glb(out, b"".join(chunks))


# --------------------------------------------------------------------------
# the generator

def _urdf_meshes(urdf_text: str) -> List[str]:
    return list(dict.fromkeys(re.findall(r'<mesh\s+filename="([^"]+)"', urdf_text)))


def generate(out_dir: Optional[str] = None, src_dir: Optional[str] = None, only: Optional[List[str]] = None) -> Dict[str, Any]:
    """Write the mesh set into ``out_dir`` (default: the shipped folder) from ManiSkill's Panda in ``src_dir``;
    return the manifest. ``only``: simplify just these visual files (by base name) and write nothing but them
    (a quick determinism check)."""
    from importlib import metadata

    out_dir = out_dir or mesh_dir()
    src_dir = src_dir or source_dir()
    have = metadata.version(SIMPLIFIER[0])
    if have != SIMPLIFIER[1]:
        raise LowPolyAssetsError(f"the mesh set is made with {SIMPLIFIER[0]}=={SIMPLIFIER[1]}, found {have}: "
                                 f"another version may decimate differently (pip install -e '.[lowpoly]')")
    with open(os.path.join(src_dir, SOURCE_URDF)) as f:
        urdf = f.read()
    files: Dict[str, str] = {}
    sources: Dict[str, str] = {}
    triangles: Dict[str, List[List[int]]] = {}
    os.makedirs(out_dir, exist_ok=True)
    for rel in _urdf_meshes(urdf):
        src = os.path.join(src_dir, rel)
        is_visual = rel.endswith(".glb")
        if only is not None and not (is_visual and os.path.basename(rel) in only):
            continue
        extra = [] if is_visual else [r for r in (rel + ".convex.stl",) if os.path.isfile(os.path.join(src_dir, r))]
        for r in [rel] + extra:
            dst = os.path.join(out_dir, r)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            sources[r] = _sha256(os.path.join(src_dir, r))
            if is_visual and os.path.basename(r) not in FULL_DETAIL:
                with open(os.path.join(src_dir, r), "rb") as f:
                    data = simplify_glb(f.read())
                with open(dst, "wb") as f:
                    f.write(data)
            else:
                shutil.copyfile(os.path.join(src_dir, r), dst)
            files[r] = _sha256(dst)
            if is_visual:
                triangles[r] = [glb_triangles(os.path.join(src_dir, r)), glb_triangles(dst)]
    if only is None:
        header = (f"<!-- {MESH_SET}: ManiSkill 3.0.1's {SOURCE_URDF} with its visual meshes simplified by "
                  f"`{GENERATOR_CMD}` (see vla_forget/envs/lowpoly.py); collision meshes and physics unchanged -->\n")
        text = urdf.replace("?>\n", "?>\n" + header, 1) if urdf.startswith("<?xml") else header + urdf
        with open(urdf_path(out_dir), "w") as f:
            f.write(text)
        srdf = SOURCE_URDF[:-4] + "srdf"
        shutil.copyfile(os.path.join(src_dir, srdf), os.path.join(out_dir, URDF_NAME[:-4] + "srdf"))
        sources[SOURCE_URDF], sources[srdf] = _sha256(os.path.join(src_dir, SOURCE_URDF)), _sha256(os.path.join(src_dir, srdf))
        files[URDF_NAME] = _sha256(urdf_path(out_dir))
        files[URDF_NAME[:-4] + "srdf"] = _sha256(os.path.join(out_dir, URDF_NAME[:-4] + "srdf"))
    files = dict(sorted(files.items()))
    manifest = {
        "mesh_set": MESH_SET,
        "sha256": set_hash(files),
        "generator": GENERATOR_CMD,
        "params": {"keep_ratio": KEEP_RATIO, "crease_deg": CREASE_DEG, "min_triangles": MIN_TRIANGLES, "full_detail": list(FULL_DETAIL),
                   "simplifier": f"{SIMPLIFIER[0]}=={SIMPLIFIER[1]}"},
        "source": {"package": "mani-skill", "version": _version("mani-skill"), "files": dict(sorted(sources.items()))},
        "triangles": {"per_file": dict(sorted(triangles.items())),
                      "before": sum(sum(b) for b, _ in triangles.values()),
                      "after": sum(sum(a) for _, a in triangles.values())},
        "files": files,
    }
    if only is None:
        with open(os.path.join(out_dir, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
    return manifest


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog=GENERATOR_CMD, description="Regenerate (or check) the low-poly Panda mesh set "
                                 "of the v2 tabletop tasks from the installed ManiSkill's Panda assets.")
    ap.add_argument("--out", default=None, help="output folder (default: the shipped assets/panda_lowpoly)")
    ap.add_argument("--check", action="store_true", help="only verify the shipped set against the recorded hash")
    args = ap.parse_args(argv)
    if args.check:
        try:
            print(f"{MESH_SET} ok: sha256 {check_meshes(args.out)}")
        except LowPolyAssetsError as e:
            print(e, file=sys.stderr)
            return 1
        return 0
    manifest = generate(args.out)
    t = manifest["triangles"]
    print(f"{MESH_SET} written to {args.out or mesh_dir()}: {t['before']} -> {t['after']} visual triangles, "
          f"sha256 {manifest['sha256']}")
    if manifest["sha256"] != MESH_SET_SHA256:
        print(f"note: this differs from the recorded MESH_SET_SHA256 ({MESH_SET_SHA256[:12]}); if the change is "
              f"intended, record the new hash (and make a new mesh set / task version)", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
