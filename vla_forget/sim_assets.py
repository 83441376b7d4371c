"""`vla-forget assets`: stage and check the simulator assets that do not ship in a wheel.

Three groups (paths from :func:`vla_forget.envs.simpler.asset_groups`):

=========  =======================================================  ==============================================
group      where it goes                                             what needs it
=========  =======================================================  ==============================================
bridge     ``$MS_ASSET_DIR/data/tasks/bridge_v2_real2sim_dataset``   the four Bridge (WidowX) tasks (ManiSkill3)
widowx     ``$MS_ASSET_DIR/data/robots/widowx``                      the same tasks (the WidowX 250 S robot)
simpler    ``$VLA_FORGET_SIMPLER_DATA`` (default                     the Google-robot tasks (SimplerEnv)
           ``$VLA_FORGET_CACHE/simpler/data``)
=========  =======================================================  ==============================================

ManiSkill3 reads its downloads from ``$MS_ASSET_DIR/data`` (``mani_skill.ASSET_DIR``).
Groups found where earlier versions of this command put them
(``$MS_ASSET_DIR/tasks/...``, ``$MS_ASSET_DIR/robots/...``) are moved into place
by ``vla-forget assets`` (:func:`move_old_layout`), which says so.

Sources: ``--download`` fetches with ManiSkill3's own downloader (ids
``bridge_v2_real2sim`` and ``widowx250s``, checksummed) or, for ``simpler``, a
shallow ``git clone`` of SimplerEnv's ManiSkill2_real2sim repository;
``--from PATH`` stages from a local copy: a ManiSkill asset folder, one of the
groups' own folders, SimplerEnv's ``ManiSkill2_real2sim/data`` (or the
SimplerEnv checkout holding it), or the downloaded ``.zip`` files. Each group's
key files are checked afterwards, and the report says exactly what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
from typing import Dict, List, Optional, Tuple

from vla_forget.errors import VlaForgetError

GROUPS = ("bridge", "widowx", "simpler")
MANISKILL_IDS = {"bridge": "bridge_v2_real2sim", "widowx": "widowx250s"}
SIMPLER_REPO = "https://github.com/simpler-env/ManiSkill2_real2sim"


class AssetError(VlaForgetError, RuntimeError):
    """Assets that cannot be staged; the message says what to do."""


def status() -> List[Dict[str, object]]:
    """One row per group: root, missing files, source, users."""
    from vla_forget.envs.simpler import asset_groups, missing_assets

    rows = []
    for name, g in asset_groups().items():
        rows.append({"group": name, "root": g["root"], "missing": missing_assets(name), "source": g["source"],
                     "used_by": g["used_by"]})
    return rows


def detect(folder: str) -> Dict[str, str]:
    """Which groups a local folder holds: group -> the folder to copy from."""
    from vla_forget.envs.simpler import BRIDGE_FILES, SIMPLER_FILES, WIDOWX_FILES

    def has(root: str, files) -> bool:
        return all(os.path.exists(os.path.join(root, f)) for f in files[:2])

    found: Dict[str, str] = {}
    candidates = {  # a ManiSkill asset folder ($MS_ASSET_DIR: data/tasks/...), its data/ folder, the group itself
        "bridge": [folder, os.path.join(folder, "data", "tasks", "bridge_v2_real2sim_dataset"),
                   os.path.join(folder, "tasks", "bridge_v2_real2sim_dataset"),
                   os.path.join(folder, "bridge_v2_real2sim_dataset")],
        "widowx": [folder, os.path.join(folder, "data", "robots", "widowx"), os.path.join(folder, "robots", "widowx"),
                   os.path.join(folder, "widowx")],
        "simpler": [folder, os.path.join(folder, "data"), os.path.join(folder, "ManiSkill2_real2sim", "data")],
    }
    files = {"bridge": BRIDGE_FILES, "widowx": WIDOWX_FILES, "simpler": SIMPLER_FILES}
    for group, roots in candidates.items():
        for root in roots:
            if os.path.isdir(root) and has(root, files[group]):
                found[group] = root
                break
    # a zip of ManiSkill's widowx robot unpacks into ManiSkill-WidowX250S-<version>/
    if "widowx" not in found and os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            sub = os.path.join(folder, name)
            if name.startswith("ManiSkill-WidowX250S") and os.path.isdir(sub) and has(sub, WIDOWX_FILES):
                found["widowx"] = sub
    return found


def _place(src: str, dst: str, link: bool) -> None:
    if os.path.islink(dst) or os.path.isfile(dst):
        os.remove(dst)
    elif os.path.isdir(dst):
        shutil.rmtree(dst)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if link:
        os.symlink(os.path.abspath(src), dst)
    else:
        shutil.copytree(src, dst, symlinks=False)


def stage_from(path: str, *, link: bool = False, groups: Tuple[str, ...] = GROUPS) -> List[str]:
    """Stage every group found in ``path`` (a folder or a .zip); returns the groups staged."""
    from vla_forget.envs.simpler import asset_groups

    if not os.path.exists(path):
        raise AssetError(f"--from {path}: no such file or folder")
    tmp: Optional[str] = None
    try:
        folder = path
        if os.path.isfile(path):
            if not zipfile.is_zipfile(path):
                raise AssetError(f"--from {path}: not a folder or a .zip file")
            if link:
                raise AssetError("--link needs a folder, not a .zip (the zip is unpacked into a temporary folder)")
            tmp = tempfile.mkdtemp(prefix="vla-forget-assets-")
            with zipfile.ZipFile(path) as z:
                z.extractall(tmp)
            folder = tmp
            entries = os.listdir(tmp)
            if len(entries) == 1 and os.path.isdir(os.path.join(tmp, entries[0])) and not detect(tmp):
                folder = os.path.join(tmp, entries[0])
        found = {g: src for g, src in detect(folder).items() if g in groups}
        if not found:
            raise AssetError(f"--from {path}: holds none of the asset groups ({', '.join(groups)}). Expected a ManiSkill "
                             "asset folder (data/tasks/bridge_v2_real2sim_dataset, data/robots/widowx), one of those folders, "
                             "SimplerEnv's ManiSkill2_real2sim/data, or ManiSkill's downloaded .zip files")
        roots = asset_groups()
        for group, src in found.items():
            _place(src, roots[group]["root"], link)
        return sorted(found)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def move_old_layout() -> List[str]:
    """Move groups found in the old layout (``$MS_ASSET_DIR/tasks/...``, ``$MS_ASSET_DIR/robots/...``) to where
    ManiSkill3 reads them (``$MS_ASSET_DIR/data/...``); returns one line per group moved."""
    from vla_forget.envs.simpler import asset_groups, misplaced_assets

    moved = []
    for group, g in asset_groups().items():
        old = misplaced_assets(group)
        if old is None:
            continue
        os.makedirs(os.path.dirname(g["root"]), exist_ok=True)
        shutil.move(old, g["root"])  # a symlink (--link) moves as a symlink
        moved.append(f"moved {group} from {old} to {g['root']} (ManiSkill3 reads $MS_ASSET_DIR/{g['layout']})")
    return moved


def download(groups: Tuple[str, ...]) -> List[str]:
    """Fetch groups from the internet (ManiSkill3's downloader; git for SimplerEnv's data)."""
    import dataclasses
    from pathlib import Path

    from vla_forget.envs.simpler import asset_groups, maniskill_data_dir

    done = []
    for group in groups:
        if group in MANISKILL_IDS:
            try:
                from mani_skill.utils import assets
                from mani_skill.utils import download_asset as dl
            except ImportError as e:  # pragma: no cover - mani-skill is a core dependency
                raise AssetError(f"ManiSkill3 is not importable ({e})") from None
            source = assets.DATA_SOURCES[MANISKILL_IDS[group]]  # filled when mani_skill.utils.assets is imported
            # into the folder checked here: ManiSkill's own default is fixed when mani_skill is first imported
            source = dataclasses.replace(source, output_dir=Path(maniskill_data_dir()))
            try:
                dl.download(source, verbose=True, non_interactive=True)
            except Exception as e:
                raise AssetError(f"downloading {MANISKILL_IDS[group]} ({source.url}) failed: {type(e).__name__}: {e}. "
                                 "Download it where the internet is reachable and stage it with --from") from None
        elif group == "simpler":
            root = asset_groups()["simpler"]["root"]
            clone = os.path.join(os.path.dirname(root), "ManiSkill2_real2sim")
            if not os.path.isdir(clone):
                try:
                    subprocess.run(["git", "clone", "--depth", "1", SIMPLER_REPO, clone], check=True)
                except (OSError, subprocess.CalledProcessError) as e:
                    raise AssetError(f"git clone {SIMPLER_REPO} failed ({e}); clone SimplerEnv where GitHub is "
                                     "reachable and stage it with --from SimplerEnv/ManiSkill2_real2sim/data") from None
            _place(os.path.join(clone, "data"), root, link=True)
        else:
            raise AssetError(f"unknown asset group {group!r}; groups: {', '.join(GROUPS)}")
        done.append(group)
    return done


def report(rows: List[Dict[str, object]]) -> str:
    """The human-readable status, with what to do for each incomplete group."""
    from vla_forget.envs.simpler import SIMPLER_PYTHON_ENV, probe_simpler_python, simpler_python

    lines = []
    for r in rows:
        missing = r["missing"]
        state = "ok" if not missing else f"MISSING {len(missing)} of its key files"
        lines.append(f"{r['group']:<8} {state}: {r['root']}  (for {r['used_by']}; source: {r['source']})")
        for m in missing:
            lines.append(f"           missing {m}")
        if missing:
            how = (f"vla-forget assets --download {r['group']}" if r["group"] in MANISKILL_IDS
                   else "vla-forget assets --from SimplerEnv/ManiSkill2_real2sim/data  (or --download simpler)")
            lines.append(f"           fix: {how}")
    why = probe_simpler_python()
    lines.append(f"simpler_env in {simpler_python()}: " + ("ok" if why is None else
                 f"not importable ({why}); set {SIMPLER_PYTHON_ENV} to SimplerEnv's interpreter"))
    return "\n".join(lines)
