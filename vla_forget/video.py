"""mp4 videos of rollouts through imageio (ffmpeg ships in imageio-ffmpeg's wheel).

The outcome is visible twice: in the file name (``...__success__...`` or
``...__fail__...``) and as a green or red frame border on the last second of
the clip; the instruction is part of the file name and of the run's
``videos/index.json``.
"""

from __future__ import annotations

import re
from typing import List, Sequence

import numpy as np

FPS = 10


def slug(text: str, max_len: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text.strip().lower()).strip("-")
    return s[:max_len].rstrip("-") or "x"


def video_name(task: str, seed: int, success: bool, instruction: str) -> str:
    return f"{task}__seed{seed}__{'success' if success else 'fail'}__{slug(instruction)}.mp4"


def outcome_border(frames: Sequence[np.ndarray], success: bool, n_last: int = FPS, width: int = 3) -> List[np.ndarray]:
    colour = np.array([40, 200, 60] if success else [220, 40, 40], dtype=np.uint8)
    out = [np.asarray(f, dtype=np.uint8) for f in frames]
    for i in range(max(0, len(out) - n_last), len(out)):
        f = out[i].copy()
        f[:width], f[-width:], f[:, :width], f[:, -width:] = colour, colour, colour, colour
        out[i] = f
    return out


def write_mp4(path: str, frames: Sequence[np.ndarray], fps: int = FPS) -> None:
    import imageio.v2 as imageio

    if not frames:
        raise ValueError(f"no frames to write to {path}")
    h, w = frames[0].shape[:2]
    # libx264 wants even sizes divisible by the macro block; pad rather than rescale.
    ph, pw = (-h) % 16, (-w) % 16
    # x264's "veryfast" preset: half the encoding time of its default at about the same size for these clips
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=7, macro_block_size=1, ffmpeg_log_level="error",
                            ffmpeg_params=["-preset", "veryfast"]) as writer:
        for f in frames:
            if ph or pw:
                f = np.pad(f, ((0, ph), (0, pw), (0, 0)))
            writer.append_data(f)
