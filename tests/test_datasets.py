"""The RLDS writer and the dataset loader (no simulator: tiny synthetic datasets)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets", reason="needs the rlds extra: pip install 'vla-forget[rlds]'")

from vla_forget.datasets import (  # noqa: E402
    DatasetError,
    dataset_name,
    mix_datasets,
    open_dataset,
    write_dataset,
)
from vla_forget.tokenizer import STATS_FILENAME, ActionStatistics  # noqa: E402

H = 16
STATE = 5


def synthetic_episodes(n, *, seed=0, task="Fake-v1", action_dim=7, offset=0.0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        T = int(rng.integers(2, 7))
        out.append(dict(
            image=rng.integers(0, 256, (T, H, H, 3), dtype=np.uint8),
            state=rng.normal(size=(T, STATE)).astype(np.float32),
            action=(rng.uniform(-1, 1, (T, action_dim)) + offset).astype(np.float32),
            reward=(np.arange(T) == T - 1).astype(np.float32),
            instruction=f"{task} instruction {i}",
            seed=10 + i, task=task, source="synthetic", is_terminal=bool(i % 2 == 0),
        ))
    return out


def write(path, eps, name="fake_v1", action_dim=7):
    return write_dataset(str(path), iter(eps), name=name, image_shape=(H, H, 3), state_dim=STATE, action_dim=action_dim)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "fake"
    eps = synthetic_episodes(6)
    write(path, eps)
    return path, eps


def test_round_trip_every_field(tiny):
    path, eps = tiny
    ds = open_dataset(str(path))
    assert ds.num_episodes == len(eps) and ds.num_steps == sum(len(e["action"]) for e in eps)
    assert ds.unnorm_key == "fake_v1" and ds.image_shape == (H, H, 3) and ds.state_dim == STATE
    for i, src in enumerate(eps):
        ep = ds.episode(i)
        T = len(src["action"])
        assert len(ep) == T
        np.testing.assert_array_equal(ep.image, src["image"])
        np.testing.assert_array_equal(ep.state, src["state"])
        np.testing.assert_array_equal(ep.action, src["action"])
        np.testing.assert_array_equal(ep.reward, src["reward"])
        np.testing.assert_array_equal(ep.discount, np.ones(T, np.float32))
        assert ep.image.dtype == np.uint8 and ep.action.dtype == np.float32
        assert ep.instruction == src["instruction"]
        assert ep.is_first.tolist() == [t == 0 for t in range(T)]
        assert ep.is_last.tolist() == [t == T - 1 for t in range(T)]
        assert ep.is_terminal.tolist() == [src["is_terminal"] and t == T - 1 for t in range(T)]
        assert ep.metadata == {"seed": src["seed"], "task": "Fake-v1", "source": "synthetic"}
    assert ds.seeds == [e["seed"] for e in eps]
    assert ds.instructions == [e["instruction"] for e in eps]


def test_step_decoding_paths_agree(tiny):
    from vla_forget.datasets import _stacked_steps

    path, _ = tiny
    steps = open_dataset(str(path))._source[2]["steps"]

    class PublicOnly:  # what the slow path sees: len and per-step access only
        def __len__(self):
            return len(steps)

        def __getitem__(self, t):
            return steps[t]

    fast, slow = _stacked_steps(steps), _stacked_steps(PublicOnly())
    for get in (lambda c: c["action"], lambda c: c["observation"]["image"], lambda c: c["observation"]["state"],
                lambda c: c["language_instruction"], lambda c: c["is_last"]):
        np.testing.assert_array_equal(get(fast), get(slow))


def test_readable_by_plain_tfds_without_tensorflow(tiny):
    import tensorflow_datasets as tfds

    path, eps = tiny
    builder = tfds.builder_from_directory(str(path / "rlds" / "fake_v1" / "1.0.0"))
    ex = builder.as_data_source(split="train")[1]
    step = ex["steps"][0]
    assert step["observation"]["image"].shape == (H, H, 3)
    np.testing.assert_array_equal(step["action"], eps[1]["action"][0])
    assert step["language_instruction"].decode() == eps[1]["instruction"]


def test_statistics_match_numpy(tiny):
    path, eps = tiny
    stats = json.loads((path / STATS_FILENAME).read_text())
    assert list(stats) == ["fake_v1"]
    entry = stats["fake_v1"]
    a = np.concatenate([e["action"] for e in eps]).astype(np.float64)
    s = np.concatenate([e["state"] for e in eps]).astype(np.float64)
    for key, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
        np.testing.assert_allclose(entry["action"][key], fn(a, axis=0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(entry["proprio"][key], fn(s, axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(entry["action"]["q01"], np.quantile(a, 0.01, axis=0))
    np.testing.assert_allclose(entry["action"]["q99"], np.quantile(a, 0.99, axis=0))
    np.testing.assert_allclose(entry["proprio"]["q99"], np.quantile(s, 0.99, axis=0))
    assert entry["action"]["mask"] == [True] * 6 + [False]
    assert entry["num_transitions"] == len(a) and entry["num_trajectories"] == len(eps)


def _draw(datasets, weights, tokenizer, n, seed):
    """A batch of the one step sampler (vla_forget.bc) over every episode of ``datasets``."""
    from vla_forget.bc import make_sampler

    return make_sampler(datasets, weights, [np.arange(d.num_episodes) for d in datasets], tokenizer,
                        np.random.default_rng(seed)).sample(n, with_index=True)


def test_sampler_shapes_tokens_and_determinism(tiny):
    from vla_forget.tokenizer import ActionTokenizer

    path, _ = tiny
    ds = open_dataset(str(path))
    b = _draw([ds], [1.0], ds.tokenizer, 9, seed=3)
    assert b["image"].shape == (9, H, H, 3) and b["image"].dtype == np.uint8
    assert b["state"].shape == (9, STATE) and b["action"].shape == (9, 7) and b["tokens"].shape == (9, 7)
    assert len(b["instruction"]) == 9 and set(b["dataset"].tolist()) == {0}
    tok = ActionTokenizer(ActionStatistics.from_dict(json.loads((path / STATS_FILENAME).read_text())["fake_v1"]["action"]))
    np.testing.assert_array_equal(b["tokens"], tok.encode(b["action"]))
    for j in range(9):  # each row is the recorded step it claims to be
        ep = ds.episode(int(b["episode"][j]))
        np.testing.assert_array_equal(b["action"][j], ep.action[int(b["step"][j])])
        np.testing.assert_array_equal(b["image"][j], ep.image[int(b["step"][j])])
        assert b["instruction"][j] == ep.instruction
    b2 = _draw([ds], [1.0], ds.tokenizer, 9, seed=3)
    assert np.array_equal(b["action"], b2["action"]) and b["instruction"] == b2["instruction"]


def test_mixing_weights_and_statistics(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, synthetic_episodes(4, seed=1, task="TaskA-v1"), name="task_a_v1")
    write(b, synthetic_episodes(3, seed=2, task="TaskB-v1", offset=0.5), name="task_b_v1")
    mix = mix_datasets([(str(a), 3.0), (str(b), 1.0)], statistics="per_dataset")
    per_dataset = [d.tokenizer for d in mix.datasets]
    which = np.concatenate([_draw(mix.datasets, mix.weights, per_dataset, 200, seed)["dataset"] for seed in range(20)])
    frac_a = float(np.mean(which == 0))
    assert abs(frac_a - 0.75) < 0.02, frac_a  # 4000 draws: 3 sigma ~ 0.02
    # per_dataset: each row tokenised with its own dataset's statistics
    s = _draw(mix.datasets, mix.weights, per_dataset, 64, 0)
    for j, k in enumerate(s["dataset"]):
        np.testing.assert_array_equal(s["tokens"][j], mix.datasets[k].tokenizer.encode(s["action"][j]))
    # pooled: one statistics entry over the union, kept beside each dataset's own
    pooled = mix_datasets([(str(a), 1.0), (str(b), 1.0)], name="ab")
    union = np.concatenate([pooled.datasets[0].all_actions(), pooled.datasets[1].all_actions()])
    np.testing.assert_allclose(pooled.statistics.q99, ActionStatistics.from_actions(union).q99)
    assert set(pooled.all_statistics) == {"task_a_v1", "task_b_v1", "ab"}
    s = _draw(pooled.datasets, pooled.weights, pooled.tokenizer, 32, 0)
    np.testing.assert_array_equal(s["tokens"], pooled.tokenizer.encode(s["action"]))
    pooled.save_statistics(str(tmp_path))
    assert set(json.loads((tmp_path / STATS_FILENAME).read_text())) == {"task_a_v1", "task_b_v1", "ab"}
    with pytest.raises(ValueError, match="positive"):
        mix_datasets([(str(a), 0.0)])
    # two collections of one task (say, a second batch of demonstrations) keep their statistics apart by name
    a2 = tmp_path / "a2"
    write(a2, synthetic_episodes(2, seed=3, task="TaskA-v1"), name="task_a_v1")
    with pytest.raises(DatasetError, match=r"rename all but one task_a_v1 collection with .*--resume --name"):
        mix_datasets([(str(a), 1.0), (str(a2), 1.0)])
    # datasets whose steps cannot share a batch are refused when mixed, naming each one's shape
    wide = tmp_path / "wide"
    eps = synthetic_episodes(2, seed=4, task="TaskC-v1")
    for ep in eps:
        ep["image"] = np.concatenate([ep["image"], ep["image"]], axis=2)  # front + wrist side by side
    write_dataset(str(wide), iter(eps), name="task_c_v1", image_shape=(H, 2 * H, 3), state_dim=STATE, action_dim=7)
    with pytest.raises(DatasetError, match=rf"different image shapes cannot share a batch: .*\({H}, {2 * H}, 3\)"):
        mix_datasets([(str(a), 1.0), (str(wide), 1.0)])


def test_bare_tfds_folder_and_no_manifest(tiny, tmp_path):
    path, eps = tiny
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    builder_dir = copy / "rlds" / "fake_v1" / "1.0.0"
    assert open_dataset(str(builder_dir)).num_episodes == len(eps)
    os.remove(copy / "dataset.json")  # a tfds dataset from elsewhere: lengths from one pass
    ds = open_dataset(str(builder_dir))
    assert ds.lengths.tolist() == [len(e["action"]) for e in eps]


@pytest.fixture
def copy_of(tiny, tmp_path):
    path, _ = tiny
    dst = tmp_path / "ds"
    shutil.copytree(path, dst)
    data = next((dst / "rlds" / "fake_v1" / "1.0.0").glob("*.array_record-*"))
    return dst, data


def test_truncated_file_is_named(copy_of):
    ds, data = copy_of
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=data.name + ".*truncated"):
        open_dataset(str(ds))


def test_corrupt_file_is_named(copy_of):
    ds, data = copy_of
    raw = bytearray(data.read_bytes())
    for i in range(200, len(raw) - 200, 5):
        raw[i] ^= 0xFF
    data.write_bytes(bytes(raw))  # same size: only decoding notices
    with pytest.raises(DatasetError, match=data.name + ".*corrupt"):
        d = open_dataset(str(ds))
        for i in range(d.num_episodes):
            d.episode(i)


def test_missing_data_file_and_unfinished_write(copy_of):
    ds, data = copy_of
    os.remove(data)
    with pytest.raises(DatasetError, match=data.name + ".*missing"):
        open_dataset(str(ds))
    os.remove(ds / "dataset.json")
    (ds / "rlds.tmp").mkdir()
    with pytest.raises(DatasetError, match="did not finish"):
        open_dataset(str(ds))


def test_episode_count_mismatch(copy_of):
    ds, _ = copy_of
    m = json.loads((ds / "dataset.json").read_text())
    m["num_episodes"] += 1
    (ds / "dataset.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="partial"):
        open_dataset(str(ds))


def test_statistics_errors(copy_of):
    ds, _ = copy_of
    with pytest.raises(DatasetError, match="unknown unnorm_key 'bridge_orig'.*fake_v1"):
        open_dataset(str(ds), unnorm_key="bridge_orig")
    os.remove(ds / STATS_FILENAME)
    with pytest.raises(DatasetError, match=f"missing dataset statistics.*{STATS_FILENAME}"):
        open_dataset(str(ds))


def test_other_action_dimension(tmp_path):
    write(tmp_path / "six", synthetic_episodes(2, action_dim=6), name="six_d", action_dim=6)
    with pytest.raises(DatasetError, match=r"features.json.*\(6,\).*7-D"):
        open_dataset(str(tmp_path / "six"))


def test_writer_checks_its_input(tmp_path):
    eps = synthetic_episodes(1)
    eps[0]["state"] = eps[0]["state"][:-1]
    with pytest.raises(DatasetError, match="same"):
        write(tmp_path / "bad", eps)
    with pytest.raises(DatasetError, match="snake_case"):
        write(tmp_path / "bad2", synthetic_episodes(1), name="Bad-Name")


def test_a_dataset_larger_than_tfds_memory_buffer_is_written_without_tensorflow(tmp_path, monkeypatch):
    """tfds spills its shuffle buffer to disk through TensorFlow past 1 GB; the writer keeps it in memory."""
    from tensorflow_datasets.core import shuffle

    import vla_forget.datasets as d

    try:
        import tensorflow  # noqa: F401
        pytest.skip("TensorFlow is installed: tfds can spill to disk, nothing to check")
    except ImportError:
        pass
    eps = synthetic_episodes(4)
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1000)  # as if the examples were past tfds's 1 GB
    write(tmp_path / "ok", eps)  # the writer's own limit (half the memory) applies while it writes
    assert open_dataset(str(tmp_path / "ok")).num_episodes == 4 and shuffle.MAX_MEM_BUFFER_SIZE == 1000
    monkeypatch.setattr(d, "memory_buffer_bytes", lambda: 1000)  # and past the writer's own limit: a clear error
    with pytest.raises(DatasetError, match="tensorflow-cpu.*several datasets"):
        write(tmp_path / "big", eps)
    assert not (tmp_path / "big" / "rlds.tmp").exists()


def test_dataset_names():
    assert dataset_name("PickCube-v1") == "pick_cube_v1"
    assert dataset_name("PlaceCubeOnTarget-v1") == "place_cube_on_target_v1"
    assert dataset_name("LiftPegUpright-v1") == "lift_peg_upright_v1"
