"""SimplerEnv (Google robot) in its own interpreter: a small request/response loop over stdin/stdout.

Run by :class:`vla_forget.envs.simpler.SimplerGoogleTaskEnv` as
``PYTHON simpler_worker.py`` where PYTHON is SimplerEnv's interpreter
(``simpler_env`` + ``mani_skill2_real2sim`` on SAPIEN 2.2.2, which cannot share
a Python environment with ManiSkill3's SAPIEN 3). This file imports nothing
from vla_forget: it needs only the standard library, numpy, gymnasium and
SimplerEnv, so the other interpreter needs no copy of this project.

Protocol: each message is a 4-byte big-endian length and a pickle (protocol 4)
of a dict. Requests ``{"cmd": ...}``:

* ``check`` -> ``{"ok": True, "versions": {...}, "asset_dir": ...}``
* ``reset`` with ``env``, ``build`` (gym.make kwargs), ``reset`` (options),
  ``overlay`` (path relative to the asset folder or None), ``camera``, ``seed``
  -> an observation; the env is (re)built only when env/build/overlay change
* ``step`` with ``action`` (7 floats: world vector, axis-angle, gripper)
  -> an observation plus ``reward``, ``success``, ``terminated``
* ``close`` -> the worker exits

An observation: ``image`` uint8 [H, W, 3] from the task's camera,
``instruction``, ``tcp_pose`` (7: position, quaternion wxyz), ``qpos``.
Errors come back as ``{"error": "Type: message", "traceback": ...}``.
"""

import os
import pickle
import struct
import sys
import traceback


def _read(stream):
    head = stream.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    return pickle.loads(stream.read(n))


def _write(stream, obj):
    data = pickle.dumps(obj, protocol=4)
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


class Worker:
    def __init__(self):
        self.env = None
        self.key = None
        self.camera = None

    def check(self, _req):
        import importlib.metadata as md

        import mani_skill2_real2sim
        import simpler_env  # noqa: F401

        versions = {}
        for name in ("sapien", "mani_skill2_real2sim", "simpler_env", "numpy"):
            try:
                versions[name] = md.version(name)
            except md.PackageNotFoundError:
                versions[name] = None
        return {"ok": True, "versions": versions, "asset_dir": str(mani_skill2_real2sim.ASSET_DIR)}

    def _observation(self, obs):
        import numpy as np

        u = self.env.unwrapped
        image = obs["image"][self.camera]["rgb"]
        tcp = obs.get("extra", {}).get("tcp_pose")
        qpos = obs.get("agent", {}).get("qpos")
        return {"image": np.ascontiguousarray(image, dtype=np.uint8), "instruction": u.get_language_instruction(),
                "tcp_pose": None if tcp is None else np.asarray(tcp, dtype=np.float32),
                "qpos": None if qpos is None else np.asarray(qpos, dtype=np.float32)}

    def reset(self, req):
        import gymnasium as gym
        import mani_skill2_real2sim
        import mani_skill2_real2sim.envs  # noqa: F401  (registers SimplerEnv's envs)

        build = dict(req["build"])
        if req.get("overlay"):
            build["rgb_overlay_path"] = str(mani_skill2_real2sim.ASSET_DIR / req["overlay"])
            build["rgb_overlay_cameras"] = [req["camera"]]
        key = repr((req["env"], sorted(build.items(), key=lambda kv: kv[0])))
        if key != self.key:
            if self.env is not None:
                self.env.close()
            self.env = gym.make(req["env"], obs_mode="rgbd", **build)
            self.key = key
        self.camera = req["camera"]
        obs, _ = self.env.reset(seed=req.get("seed"), options=req["reset"])
        return self._observation(obs)

    def step(self, req):
        import numpy as np

        obs, reward, terminated, truncated, info = self.env.step(np.asarray(req["action"], dtype=np.float64))
        out = self._observation(obs)
        success = bool(info.get("success", terminated))
        out.update(reward=float(reward), success=success, terminated=bool(terminated), truncated=bool(truncated))
        return out


def main():
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything SimplerEnv prints must not corrupt the channel
    worker = Worker()
    while True:
        req = _read(stdin)
        if req is None or req.get("cmd") == "close":
            break
        try:
            handler = getattr(worker, req["cmd"])
            _write(stdout, handler(req))
        except Exception as e:  # reported to the parent, which raises it with the message
            _write(stdout, {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    if worker.env is not None:
        worker.env.close()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
