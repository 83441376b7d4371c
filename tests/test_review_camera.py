"""The review camera (videos only): a larger picture from the policy camera's pose that changes neither the policy's
images nor the physics, on the real CPU simulator."""

from __future__ import annotations

import numpy as np
import torch

from vla_forget.envs import make_task_env


def test_the_review_camera_leaves_the_policy_images_and_the_physics_unchanged():
    plain = make_task_env("PlaceCubeOnTarget-v2", image_size=64, render_images=True)
    review = make_task_env("PlaceCubeOnTarget-v2", image_size=64, render_images=True, review_size=192)
    try:
        a, b = plain.reset([7]), review.reset([7])
        assert plain.review_frames().shape == (1, 64, 64, 3)  # without one: the policy camera's frames
        first = review.review_frames()
        assert first.shape == (1, 192, 192, 3) and first.dtype == np.uint8 and first.std() > 5
        g = torch.Generator().manual_seed(0)
        for _ in range(8):
            act = torch.rand(1, 7, generator=g) * 2 - 1
            a, *_ = plain.step(act)
            b, *_ = review.step(act)
            big = review.review_frames()  # rendered between steps, as the video episodes do
        assert torch.equal(a.image, b.image) and torch.equal(a.state, b.state)
        # the same scene at three times the size: downscaled, it looks like the policy's picture
        small = big[0].reshape(64, 3, 64, 3, 3).mean((1, 3))
        assert np.abs(small - a.image[0].numpy().astype(float)).mean() < 40
    finally:
        plain.close()
        review.close()
