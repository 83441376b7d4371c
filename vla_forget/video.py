"""mp4 videos of rollouts through imageio (ffmpeg ships in imageio-ffmpeg's wheel).

The outcome is visible twice: in the file name (``...__success__...`` or
``...__fail__...``) and as a green or red frame border on the last second of
the clip. The instruction is part of the file name, of the episode's record,
and, in videos from the review camera, a caption under the picture
(:func:`captioned`).
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


def captioned(frames: Sequence[np.ndarray], text: str) -> List[np.ndarray]:
    """``frames`` with ``text`` written under the picture, on a dark strip (wrapped to the frame's width)."""
    from PIL import Image, ImageDraw, ImageFont

    frames = [np.asarray(f, dtype=np.uint8) for f in frames]
    if not frames:
        return frames
    h, w = frames[0].shape[:2]
    size = max(10, w // 20)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(Image.new("RGB", (w, 1)))
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > w - size:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    strip_h = (len(lines) * (size + size // 3) + size // 2 + 15) // 16 * 16  # whole macro blocks: no padding
    strip = Image.new("RGB", (w, strip_h), (24, 24, 24))
    d = ImageDraw.Draw(strip)
    for k, ln in enumerate(lines):
        d.text((size // 2, size // 4 + k * (size + size // 3)), ln, fill=(240, 240, 240), font=font)
    below = np.asarray(strip, dtype=np.uint8)
    return [np.concatenate([f, below], axis=0) for f in frames]


def poster_name(video: str) -> str:
    """The still shown before a video plays (its last frame: the outcome): ``NAME.mp4`` -> ``NAME.jpg``."""
    return video[: -len(".mp4")] + ".jpg" if video.endswith(".mp4") else video + ".jpg"


def write_poster(path: str, frame: np.ndarray) -> None:
    import imageio.v2 as imageio

    imageio.imwrite(path, np.asarray(frame, dtype=np.uint8), quality=85)


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
