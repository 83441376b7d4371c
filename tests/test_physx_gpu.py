"""GPU physics needs SAPIEN's PhysX GPU library, which SAPIEN downloads on first use: offline, a clear error."""

import os

import pytest

from vla_forget.envs import vulkan


def test_missing_physx_gpu_library_offline_gives_an_actionable_error(tmp_path, monkeypatch):
    import sapien

    monkeypatch.setenv("HOME", str(tmp_path))
    calls = []

    def offline():
        calls.append(1)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(sapien.physx, "enable_gpu", offline)
    path, url = vulkan.physx_gpu_library()
    assert path.startswith(str(tmp_path)) and path.endswith("libPhysXGpu_64.so")
    assert sapien.physx.version() in path and sapien.physx.version() in url
    with pytest.raises(vulkan.PhysxGpuUnavailableError) as e:
        vulkan.check_physx_gpu()
    assert calls == [1], "SAPIEN's own download is tried once"
    msg = str(e.value)
    assert os.path.dirname(path) in msg and url in msg and "ConnectionError" in msg and "--num-envs 1" in msg


def test_present_physx_gpu_library_is_not_fetched_again(tmp_path, monkeypatch):
    import sapien

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sapien.physx, "enable_gpu", lambda: pytest.fail("must not download a library that is there"))
    path, _ = vulkan.physx_gpu_library()
    os.makedirs(os.path.dirname(path))
    open(path, "wb").close()
    assert vulkan.check_physx_gpu() == path
