"""Demonstration datasets: the RLDS writer and the one loader every trainer uses.

Layout of a dataset folder (written by :func:`write_dataset`, e.g. through
``vla-forget demos``; details in ``docs/datasets.md``)::

    DIR/dataset.json              manifest: name (= unnorm_key), task(s), seeds, episode lengths,
                                  instructions, shapes, data files with their byte sizes
    DIR/dataset_statistics.json   OpenVLA's {unnorm_key: {"action": ..., "proprio": ..., "num_transitions",
                                  "num_trajectories"}}
    DIR/rlds/NAME/1.0.0/          a tensorflow-datasets (tfds) dataset, array_record files, split "train"
    DIR/raw/                      the collection journal of ``vla-forget demos`` (see vla_forget.demos)

Each tfds example is one episode in the Open X-Embodiment step layout::

    steps/observation/image     uint8 [H, W, 3]   (a raw tensor, not an encoded image)
    steps/observation/state     float32 [S]
    steps/action                float32 [7]       dx, dy, dz, droll, dpitch, dyaw, gripper
    steps/language_instruction  text
    steps/reward                float32           success after the step's action (0/1)
    steps/discount              float32           1.0
    steps/is_first, is_last     bool
    steps/is_terminal           bool              last step of an episode that ended because the task was solved
    episode_metadata/seed, task, source

Raw uint8 tensors in array_record files are what tensorflow-datasets can write
and read *without* TensorFlow (``builder.as_data_source()``). ``open_dataset``
reads any such dataset (a folder written here, or a bare tfds version folder
with the same step layout) and checks it: partial or corrupt data files,
another action dimension, missing statistics and unknown ``unnorm_key`` are
errors that name the file.

Training draws steps with :func:`vla_forget.bc.make_sampler` (the one step
sampler of pretraining and SFT); :func:`mix_datasets` pools the statistics of
several datasets.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from vla_forget.jsonio import write_json
from vla_forget.tokenizer import (
    ACTION_DIM,
    STATS_FILENAME,
    ActionStatistics,
    ActionTokenizer,
    StatisticsError,
    load_dataset_statistics,
    select_statistics,
)
from vla_forget.errors import VlaForgetError

MANIFEST = "dataset.json"
FORMAT = "vla-forget-rlds"
FORMAT_VERSION = 1
RLDS_DIR = "rlds"
TFDS_VERSION = "1.0.0"
SPLIT = "train"
#: default memory for decoded episodes per open dataset
CACHE_BYTES = 2 << 30
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

__all__ = [
    "DatasetError",
    "Episode",
    "RLDSDataset",
    "MixedDataset",
    "dataset_name",
    "write_dataset",
    "dataset_statistics",
    "open_dataset",
    "mix_datasets",
]


class DatasetError(VlaForgetError, ValueError):
    """A dataset that cannot be read or written as asked; the message names the file."""


# --------------------------------------------------------------------------
# names and tfds plumbing

def dataset_name(task: str) -> str:
    """A tfds-valid dataset name (also the ``unnorm_key``) for a task id: ``PickCube-v1`` -> ``pick_cube_v1``."""
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", task)
    s = re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()
    if not s or not s[0].isalpha():
        s = "ds_" + s
    return s


def _tfds():
    """tensorflow-datasets, quiet, with a clear error when the extra is not installed."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - depends on the install
        raise DatasetError(
            "reading and writing RLDS datasets needs tensorflow-datasets and array-record "
            "(pip install 'vla-forget[rlds]'; TensorFlow itself is not needed)"
        ) from e
    tfds.disable_progress_bar()
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover
        pass
    return tfds


def _features(tfds, image_shape: Tuple[int, int, int], state_dim: int, action_dim: int):
    f = tfds.features
    return f.FeaturesDict({
        "steps": f.Dataset({
            "observation": f.FeaturesDict({
                "image": f.Tensor(shape=tuple(image_shape), dtype=np.uint8),
                "state": f.Tensor(shape=(state_dim,), dtype=np.float32),
            }),
            "action": f.Tensor(shape=(action_dim,), dtype=np.float32),
            "language_instruction": f.Text(),
            "reward": f.Scalar(dtype=np.float32),
            "discount": f.Scalar(dtype=np.float32),
            "is_first": f.Scalar(dtype=np.bool_),
            "is_last": f.Scalar(dtype=np.bool_),
            "is_terminal": f.Scalar(dtype=np.bool_),
        }),
        "episode_metadata": f.FeaturesDict({
            "seed": f.Scalar(dtype=np.int64),
            "task": f.Text(),
            "source": f.Text(),
        }),
    })


def _builder_class(tfds, name: str, features, description: str, examples: Iterable[Tuple[str, Dict[str, Any]]]):
    """A GeneratorBasedBuilder made for one dataset (not added to tfds's global registry)."""

    class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(TFDS_VERSION)
        RELEASE_NOTES = {TFDS_VERSION: "written by vla-forget"}

        def _info(self):
            # disable_shuffling keeps episodes in the order written (seed order)
            return tfds.core.DatasetInfo(builder=self, description=description, features=features,
                                         disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {SPLIT: self._generate_examples()}

        def _generate_examples(self):
            yield from examples

    _Builder.name = name
    return _Builder


# --------------------------------------------------------------------------
# writing

def _steps_of(ep: Dict[str, Any], action_dim: int) -> Tuple[List[Dict[str, Any]], int]:
    image = np.asarray(ep["image"], dtype=np.uint8)
    state = np.asarray(ep["state"], dtype=np.float32)
    action = np.asarray(ep["action"], dtype=np.float32)
    T = action.shape[0]
    if T == 0:
        raise DatasetError(f"episode seed {ep.get('seed')} has no steps")
    if image.shape[0] != T or state.shape[0] != T or action.shape[1:] != (action_dim,):
        raise DatasetError(f"episode seed {ep.get('seed')}: image {image.shape}, state {state.shape}, "
                           f"action {action.shape} do not describe the same {T} steps of {action_dim}-D actions")
    reward = np.asarray(ep.get("reward", np.zeros(T)), dtype=np.float32).reshape(T)
    discount = np.asarray(ep.get("discount", np.ones(T)), dtype=np.float32).reshape(T)
    terminal = bool(ep.get("is_terminal", False))
    instr = str(ep["instruction"])
    steps = [
        {
            "observation": {"image": image[t], "state": state[t]},
            "action": action[t],
            "language_instruction": instr,
            "reward": reward[t],
            "discount": discount[t],
            "is_first": t == 0,
            "is_last": t == T - 1,
            "is_terminal": terminal and t == T - 1,
        }
        for t in range(T)
    ]
    return steps, T


def dataset_statistics(actions: np.ndarray, states: Optional[np.ndarray], num_trajectories: int) -> Dict[str, Any]:
    """One ``dataset_statistics.json`` entry as OpenVLA writes it (the gripper, the last dim, unmasked)."""
    a = np.asarray(actions, dtype=np.float64)
    entry: Dict[str, Any] = {"action": ActionStatistics.from_actions(a).to_dict()}
    if states is not None and len(states):
        s = ActionStatistics.from_actions(np.asarray(states, dtype=np.float64), mask=np.ones(states.shape[1], bool))
        proprio = s.to_dict()
        proprio.pop("mask")  # OpenVLA's proprio statistics carry no mask
        entry["proprio"] = proprio
    entry["num_transitions"] = int(a.shape[0])
    entry["num_trajectories"] = int(num_trajectories)
    return entry


def memory_buffer_bytes() -> int:
    """How many bytes of serialised examples the writer keeps in memory: half the machine's memory (at
    least tfds's own 1 GiB), since without TensorFlow tfds cannot spill its shuffle buffer to disk."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    return max(1000 << 20, total // 2)


@contextlib.contextmanager
def _memory_shuffle_buffer(tfds):
    """Raise tfds's in-memory buffer while writing (restored after): its disk spill needs TensorFlow."""
    try:
        from tensorflow_datasets.core import shuffle
    except ImportError:  # another tfds layout: keep its default
        yield
        return
    old = shuffle.MAX_MEM_BUFFER_SIZE
    shuffle.MAX_MEM_BUFFER_SIZE = max(old, memory_buffer_bytes())
    try:
        yield
    finally:
        shuffle.MAX_MEM_BUFFER_SIZE = old


def write_dataset(
    out: str,
    episodes: Iterable[Dict[str, Any]],
    *,
    name: str,
    image_shape: Tuple[int, int, int],
    state_dim: int,
    action_dim: int = ACTION_DIM,
    description: str = "",
    manifest_extra: Optional[Dict[str, Any]] = None,
    file_format: str = "array_record",
) -> Dict[str, Any]:
    """Write episodes as an RLDS dataset in ``out`` (replacing one that is there); returns the manifest.

    ``episodes`` yields dicts with ``image`` uint8 ``[T, H, W, 3]``, ``state``
    ``[T, S]``, ``action`` ``[T, action_dim]``, ``instruction``, ``seed``,
    ``task``, and optionally ``reward`` ``[T]``, ``discount`` ``[T]``,
    ``is_terminal`` (whether the last step solved the task) and ``source``.
    They are consumed one at a time (memory holds one episode plus the actions
    and states for the statistics). The tfds data is built in a temporary
    folder and moved into place, then ``dataset_statistics.json``, and
    ``dataset.json`` last: a dataset with a manifest is complete.
    """
    tfds = _tfds()
    if not _NAME_RE.match(name):
        raise DatasetError(f"dataset name {name!r} must be snake_case (letters, digits, _), e.g. {dataset_name(name)!r}")
    if file_format not in ("array_record", "tfrecord"):
        raise DatasetError(f"file_format must be array_record (readable without TensorFlow) or tfrecord, not {file_format!r}")
    os.makedirs(out, exist_ok=True)
    manifest_path = os.path.join(out, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # the dataset is incomplete until the new manifest is written
    acts: List[np.ndarray] = []
    states: List[np.ndarray] = []
    meta: Dict[str, List[Any]] = {"seeds": [], "lengths": [], "instructions": [], "tasks": [], "terminal": []}

    def examples():
        for ep in episodes:
            steps, T = _steps_of(ep, action_dim)
            acts.append(np.asarray(ep["action"], np.float32))
            states.append(np.asarray(ep["state"], np.float32))
            meta["seeds"].append(int(ep["seed"]))
            meta["lengths"].append(T)
            meta["instructions"].append(str(ep["instruction"]))
            meta["tasks"].append(str(ep["task"]))
            meta["terminal"].append(bool(ep.get("is_terminal", False)))
            key = f"{ep['task']}__{int(ep['seed']):06d}"
            if ep.get("instruction_index") is not None:  # the same scene under each instruction
                key += f"__i{int(ep['instruction_index'])}"
            yield key, {"steps": steps, "episode_metadata": {"seed": int(ep["seed"]), "task": str(ep["task"]),
                                                             "source": str(ep.get("source", ""))}}

    features = _features(tfds, image_shape, state_dim, action_dim)
    builder_cls = _builder_class(tfds, name, features, description, examples())
    tmp = os.path.join(out, RLDS_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        builder = builder_cls(data_dir=tmp, file_format=file_format)
        with contextlib.redirect_stdout(io.StringIO()), _memory_shuffle_buffer(tfds):  # tfds prints "Downloading ..."
            builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"))
    except DatasetError:
        raise
    except Exception as e:
        if file_format == "tfrecord" and "tensorflow" in str(e).lower():
            raise DatasetError("file_format='tfrecord' needs TensorFlow; array_record does not") from e
        if isinstance(e, ImportError) and "tensorflow" in str(e).lower():
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetError(
                f"the examples of {out} outgrew the writer's in-memory buffer "
                f"({memory_buffer_bytes() >> 20} MiB), and spilling to disk needs TensorFlow: install it "
                f"(pip install tensorflow-cpu), or write the data as several datasets (e.g. demos with another "
                f"--seed-start and --out) and give each to --data; the raw episodes are kept") from e
        raise
    if not meta["seeds"]:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetError(f"no episodes to write to {out}")
    shutil.rmtree(os.path.join(tmp, "downloads"), ignore_errors=True)
    final = os.path.join(out, RLDS_DIR)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)

    all_actions = np.concatenate(acts)
    stats = {name: dataset_statistics(all_actions, np.concatenate(states), len(acts))}
    _write_json(os.path.join(out, STATS_FILENAME), stats)

    builder_dir = os.path.join(RLDS_DIR, name, TFDS_VERSION)
    files = {}
    for fn in sorted(os.listdir(os.path.join(out, builder_dir))):
        if ".array_record" in fn or ".tfrecord" in fn:
            files[os.path.join(builder_dir, fn)] = os.path.getsize(os.path.join(out, builder_dir, fn))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "unnorm_key": name,
        "builder_dir": builder_dir,
        "split": SPLIT,
        "file_format": file_format,
        "image_shape": list(image_shape),
        "state_dim": int(state_dim),
        "action_dim": int(action_dim),
        "num_episodes": len(meta["seeds"]),
        "num_transitions": int(all_actions.shape[0]),
        "tasks": sorted(set(meta["tasks"])),
        "seeds": meta["seeds"],
        "lengths": meta["lengths"],
        "instructions": meta["instructions"],
        "episode_tasks": meta["tasks"],
        "files": files,
        **(manifest_extra or {}),
    }
    _write_json(manifest_path, manifest)
    return manifest


def _write_json(path: str, data: Any) -> None:
    write_json(path, data)


# --------------------------------------------------------------------------
# reading

@dataclass
class Episode:
    """One episode as numpy arrays (``T`` steps)."""

    image: np.ndarray  # uint8 [T, H, W, 3]
    state: np.ndarray  # float32 [T, S]
    action: np.ndarray  # float32 [T, 7]
    instruction: str
    reward: np.ndarray  # float32 [T]
    discount: np.ndarray  # float32 [T]
    is_first: np.ndarray  # bool [T]
    is_last: np.ndarray  # bool [T]
    is_terminal: np.ndarray  # bool [T]
    metadata: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.action.shape[0])


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)


def _stacked_steps(steps) -> Dict[str, Any]:
    """The nested steps of one episode as stacked arrays ``{key: [T, ...]}``.

    tfds's numpy path returns the steps as a lazy data source that decodes one
    step per access; its ``getitem`` already holds every feature stacked over
    the steps, which is taken directly when it has the expected shapes (half
    the decoding time), else the steps are read one by one and stacked.
    """
    g = getattr(steps, "getitem", None)
    T = len(steps)
    try:
        cols = g.nest(g.flat_example)
        if len(cols["action"]) == T and np.asarray(cols["observation"]["image"]).ndim == 4:
            return cols
    except Exception:  # another tfds version: the public, slower path
        pass
    rows = [steps[t] for t in range(T)]

    def stack(a: List[Any]) -> Any:
        if isinstance(a[0], dict):
            return {k: stack([r[k] for r in a]) for k in a[0]}
        return np.stack([np.asarray(x) for x in a])

    return stack(rows) if rows else {"action": np.zeros((0, ACTION_DIM), np.float32)}


def _find_root(path: str) -> Tuple[str, str]:
    """(dataset folder, tfds builder folder) for a dataset folder or a bare tfds version folder."""
    path = os.path.abspath(path.rstrip("/"))
    if not os.path.exists(path):
        raise DatasetError(f"dataset {path} does not exist")
    if os.path.exists(os.path.join(path, MANIFEST)):
        return path, ""
    if os.path.exists(os.path.join(path, "dataset_info.json")):  # a tfds version folder: DIR/rlds/NAME/1.0.0
        for up in (3, 0, 1, 2):
            root = path
            for _ in range(up):
                root = os.path.dirname(root)
            if os.path.exists(os.path.join(root, MANIFEST)) or os.path.exists(os.path.join(root, STATS_FILENAME)):
                return root, path
        return path, path
    if os.path.isdir(os.path.join(path, RLDS_DIR + ".tmp")) or os.path.isdir(os.path.join(path, "raw")):
        raise DatasetError(f"{path} holds no finished dataset ({MANIFEST} is missing): the writer did not finish; "
                           "rerun `vla-forget demos ... --resume` to complete it")
    raise DatasetError(f"{path} is not a dataset: expected {MANIFEST} (a vla-forget dataset) or dataset_info.json "
                       "(a tfds dataset version folder)")


class RLDSDataset:
    """A dataset opened for reading (see :func:`open_dataset`)."""

    def __init__(self, path: str, unnorm_key: Optional[str] = None, cache_episodes: Optional[int] = None,
                 cache_bytes: int = CACHE_BYTES):
        tfds = _tfds()
        root, builder_dir = _find_root(path)
        self.root = root
        self.manifest: Dict[str, Any] = {}
        mpath = os.path.join(root, MANIFEST)
        if os.path.exists(mpath):
            try:
                with open(mpath) as f:
                    self.manifest = json.load(f)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{mpath} is not valid JSON: {e}") from None
            if self.manifest.get("format") != FORMAT:
                raise DatasetError(f"{mpath} is not a {FORMAT} manifest (format={self.manifest.get('format')!r})")
            if int(self.manifest.get("format_version", 0)) > FORMAT_VERSION:
                raise DatasetError(f"{mpath} has format_version {self.manifest['format_version']}; this vla-forget "
                                   f"reads up to {FORMAT_VERSION}: upgrade vla-forget")
            builder_dir = builder_dir or os.path.join(root, self.manifest["builder_dir"])
            self._check_files()
        self.builder_dir = builder_dir
        try:
            self.builder = tfds.builder_from_directory(builder_dir)
        except Exception as e:
            raise DatasetError(f"cannot open the tfds dataset in {builder_dir}: {e}") from e
        self._check_features()

        # statistics
        spath = os.path.join(root, STATS_FILENAME)
        if not os.path.exists(spath):
            raise DatasetError(f"missing dataset statistics: {spath} does not exist (every dataset needs its "
                               f"{STATS_FILENAME}; `vla-forget demos` writes it)")
        try:
            self.all_statistics = load_dataset_statistics(spath)
            key = unnorm_key or self.manifest.get("unnorm_key")
            if key is None and self.builder.name in self.all_statistics:
                key = self.builder.name
            self.statistics = select_statistics(self.all_statistics, key, where=spath)
        except StatisticsError as e:
            raise DatasetError(str(e)) from None
        self.unnorm_key = key if key is not None else sorted(self.all_statistics)[0]
        if self.statistics.dim != self.action_dim:
            raise DatasetError(f"{spath}: statistics of {self.statistics.dim}-D actions for a dataset of "
                               f"{self.action_dim}-D actions")
        self.tokenizer = ActionTokenizer(self.statistics)

        # episodes
        try:
            self._source = self.builder.as_data_source(split=self.manifest.get("split", SPLIT))
            n = len(self._source)
        except Exception as e:
            raise DatasetError(f"cannot read the episodes in {builder_dir}: {e}") from e
        if self.manifest:
            if n != self.manifest["num_episodes"]:
                raise DatasetError(f"{builder_dir} holds {n} episodes, {mpath} lists {self.manifest['num_episodes']}: "
                                   "the dataset is partial; rebuild it")
            self.lengths = np.asarray(self.manifest["lengths"], dtype=np.int64)
            self.instructions = list(self.manifest["instructions"])
            self.seeds = list(self.manifest["seeds"])
        else:  # a foreign tfds dataset: one pass for the lengths
            eps = [self._read(i) for i in range(n)]
            self.lengths = np.asarray([len(e) for e in eps], dtype=np.int64)
            self.instructions = [e.instruction for e in eps]
            self.seeds = [e.metadata.get("seed") for e in eps]
        self.name = self.manifest.get("name", self.builder.name)
        self._cache: "OrderedDict[int, Episode]" = OrderedDict()
        if cache_episodes is None:  # as many as fit in cache_bytes (a small dataset stays in memory whole)
            H, W, C = self.image_shape
            per_episode = max(1.0, float(self.lengths.mean()) if len(self.lengths) else 1.0) * (
                H * W * C + 4 * (self.state_dim + self.action_dim + 3))
            cache_episodes = int(min(max(1, len(self.lengths)), max(1, cache_bytes // per_episode)))
        self.cache_episodes = int(cache_episodes)
        self._offsets = np.concatenate([[0], np.cumsum(self.lengths)])

    # --- checks ------------------------------------------------------------
    def _check_files(self) -> None:
        for rel, size in self.manifest.get("files", {}).items():
            p = os.path.join(self.root, rel)
            if not os.path.exists(p):
                raise DatasetError(f"{p} is missing: the dataset is partial; rebuild it")
            got = os.path.getsize(p)
            if got != size:
                raise DatasetError(f"{p} has {got} bytes, {MANIFEST} says {size}: the file is truncated or corrupt; "
                                   "rebuild the dataset")

    def _check_features(self) -> None:
        feats = self.builder.info.features
        where = os.path.join(self.builder_dir, "features.json")
        try:
            steps = feats["steps"]
            action_shape = tuple(steps["action"].shape)
            image_shape = tuple(steps["observation"]["image"].shape)
            state_shape = tuple(steps["observation"]["state"].shape)
            for k in ("language_instruction", "reward", "discount", "is_first", "is_last", "is_terminal"):
                steps[k]
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{where}: not the RLDS step layout vla-forget reads (missing {e}); expected "
                               "steps/observation/{image,state}, steps/action, steps/language_instruction, ...") from None
        if action_shape != (ACTION_DIM,):
            raise DatasetError(f"{where}: actions of shape {action_shape}; vla-forget's policies take "
                               f"{ACTION_DIM}-D end-effector deltas (dx, dy, dz, droll, dpitch, dyaw, gripper)")
        image_dtype = np.dtype(steps["observation"]["image"].np_dtype)
        if len(image_shape) != 3 or image_shape[-1] != 3 or image_dtype != np.uint8:
            raise DatasetError(f"{where}: images must be raw uint8 tensors [H, W, 3], got {image_shape} {image_dtype}")
        self.action_dim = action_shape[0]
        self.image_shape = image_shape
        self.state_dim = state_shape[0] if state_shape else 0

    def data_files(self) -> List[str]:
        """The dataset's data files (array_record or tfrecord shards)."""
        d = self.builder_dir
        return [os.path.join(d, f) for f in sorted(os.listdir(d)) if ".array_record" in f or ".tfrecord" in f]

    # --- episodes ----------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return int(len(self.lengths))

    @property
    def num_steps(self) -> int:
        return int(self._offsets[-1])

    def __len__(self) -> int:
        return self.num_episodes

    def __iter__(self) -> Iterator[Episode]:
        for i in range(self.num_episodes):
            yield self.episode(i)

    def episode(self, i: int) -> Episode:
        """Episode ``i`` (in the order written: seed order for ``vla-forget demos``)."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} of a dataset with {self.num_episodes}")
        ep = self._cache.get(i)
        if ep is None:
            ep = self._read(i)
            if self.manifest and len(ep) != self.lengths[i]:
                raise DatasetError(f"{self.builder_dir}: episode {i} has {len(ep)} steps, {MANIFEST} says "
                                   f"{self.lengths[i]}: the dataset is corrupt; rebuild it")
            self._cache[i] = ep
            while len(self._cache) > max(1, self.cache_episodes):
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
        return ep

    def _read(self, i: int) -> Episode:
        try:
            ex = self._source[i]
            cols = _stacked_steps(ex["steps"])
        except Exception as e:
            files = ", ".join(self.data_files()) or self.builder_dir
            raise DatasetError(f"episode {i} cannot be decoded from {files} ({type(e).__name__}: {e}): "
                               "the data files are corrupt or partial; rebuild the dataset") from e
        if len(cols["action"]) == 0:
            raise DatasetError(f"{self.builder_dir}: episode {i} has no steps")
        meta = {k: (_text(v) if isinstance(v, (bytes, np.bytes_)) else v.item() if hasattr(v, "item") else v)
                for k, v in ex.get("episode_metadata", {}).items()}
        obs = cols["observation"]
        return Episode(
            image=np.asarray(obs["image"], dtype=np.uint8),
            state=np.asarray(obs["state"], dtype=np.float32),
            action=np.asarray(cols["action"], dtype=np.float32),
            instruction=_text(cols["language_instruction"][0]),
            reward=np.asarray(cols["reward"], dtype=np.float32),
            discount=np.asarray(cols["discount"], dtype=np.float32),
            is_first=np.asarray(cols["is_first"], dtype=bool),
            is_last=np.asarray(cols["is_last"], dtype=bool),
            is_terminal=np.asarray(cols["is_terminal"], dtype=bool),
            metadata=meta,
        )

    def all_actions(self) -> np.ndarray:
        """Every action ``[num_steps, 7]`` (read-only; one pass over the episodes the first time, then kept)."""
        if getattr(self, "_all_actions", None) is None:
            acts = np.concatenate([self.episode(i).action for i in range(self.num_episodes)])
            acts.flags.writeable = False
            self._all_actions = acts
        return self._all_actions

    def locate(self, flat: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Flat step indices -> (episode, step)."""
        ep = np.searchsorted(self._offsets, flat, side="right") - 1
        return ep, flat - self._offsets[ep]

    def gather(self, episodes: Sequence[int], steps: Sequence[int]) -> Dict[str, Any]:
        """Numpy arrays of the given (episode, step) pairs, each episode decoded once."""
        B = len(episodes)
        H, W, C = self.image_shape
        image = np.empty((B, H, W, C), np.uint8)
        state = np.empty((B, self.state_dim), np.float32)
        action = np.empty((B, self.action_dim), np.float32)
        instr: List[str] = [""] * B
        order = np.argsort(np.asarray(episodes), kind="stable")
        for j in order:
            ep = self.episode(int(episodes[j]))
            t = int(steps[j])
            image[j], state[j], action[j], instr[j] = ep.image[t], ep.state[t], ep.action[t], ep.instruction
        return {"image": image, "state": state, "action": action, "instruction": instr}

    def __repr__(self) -> str:
        return (f"RLDSDataset({self.name!r}, {self.num_episodes} episodes, {self.num_steps} steps, "
                f"image {self.image_shape}, unnorm_key={self.unnorm_key!r})")


def open_dataset(path: str, *, unnorm_key: Optional[str] = None, cache_episodes: Optional[int] = None,
                 cache_bytes: int = CACHE_BYTES) -> RLDSDataset:
    """Open a dataset folder written by :func:`write_dataset` (or a tfds version folder with the same layout).

    ``unnorm_key`` picks the statistics in ``dataset_statistics.json`` (default:
    the dataset's own). Decoded episodes stay in memory (least recently used
    first out): ``cache_episodes`` of them, by default as many as fit in
    ``cache_bytes`` (2 GiB) — a dataset of that size is read from disk once.
    """
    return RLDSDataset(path, unnorm_key=unnorm_key, cache_episodes=cache_episodes, cache_bytes=cache_bytes)


# --------------------------------------------------------------------------
# mixtures

class MixedDataset:
    """Several datasets sampled with fixed weights (see :func:`mix_datasets`)."""

    def __init__(self, datasets: List[RLDSDataset], weights: np.ndarray, statistics: str, name: str):
        self.datasets = datasets
        self.weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.statistics_mode = statistics
        self.name = name
        self.all_statistics: Dict[str, Any] = {}
        for d in datasets:
            self.all_statistics.update({d.unnorm_key: d.all_statistics[d.unnorm_key]})
        if statistics == "pooled":
            acts = [d.all_actions() for d in datasets]
            entry = dataset_statistics(np.concatenate(acts), None, sum(d.num_episodes for d in datasets))
            self.all_statistics[name] = entry
            self.unnorm_key = name
            self.statistics = ActionStatistics.from_dict(entry["action"])
            self.tokenizer = ActionTokenizer(self.statistics)
        else:
            self.unnorm_key = None
            self.statistics = None
            self.tokenizer = None

    @property
    def num_steps(self) -> int:
        return sum(d.num_steps for d in self.datasets)

    def save_statistics(self, path: str) -> None:
        """Write the mixture's ``dataset_statistics.json`` (every dataset's entry, plus the pooled one)."""
        if os.path.isdir(path):
            path = os.path.join(path, STATS_FILENAME)
        _write_json(path, self.all_statistics)

    def __repr__(self) -> str:
        parts = ", ".join(f"{d.name}:{w:.3g}" for d, w in zip(self.datasets, self.weights))
        return f"MixedDataset({self.name!r}, [{parts}], statistics={self.statistics_mode!r})"


def mix_datasets(
    specs: Sequence[Tuple[Union[str, RLDSDataset], float]],
    *,
    statistics: str = "pooled",
    name: str = "mix",
    cache_episodes: Optional[int] = None,
) -> MixedDataset:
    """Sample several datasets with the given weights: ``mix_datasets([(path, 2.0), (path2, 1.0)])``.

    A batch row comes from dataset ``i`` with probability ``w_i / sum(w)``, then
    from a step drawn uniformly within it (so the weights are per-sample, not
    per-episode, and do not depend on the datasets' sizes).

    Statistics: ``"pooled"`` (default) tokenises every dataset with one set of
    statistics computed over the union of their actions, stored under the key
    ``name`` next to each dataset's own entry; one tokenizer then serves the
    whole mixture, as a checkpoint of this project carries one statistics entry
    that bench uses for every task. ``"per_dataset"`` keeps OpenVLA's training
    rule: each row is tokenised with its own dataset's statistics (the batch's
    ``unnorm_key`` says which), and inference must pick the key per task.
    """
    if statistics not in ("pooled", "per_dataset"):
        raise ValueError(f"statistics must be 'pooled' or 'per_dataset', not {statistics!r}")
    if not specs:
        raise ValueError("mix_datasets needs at least one (path, weight)")
    datasets, weights = [], []
    for spec, w in specs:
        if not (w > 0 and np.isfinite(w)):
            raise ValueError(f"mixture weights must be positive numbers, got {w!r} for {spec}")
        ds = spec if isinstance(spec, RLDSDataset) else open_dataset(spec, cache_episodes=cache_episodes)
        datasets.append(ds)
        weights.append(float(w))
    keys = [d.unnorm_key for d in datasets]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise DatasetError(f"datasets in a mixture need distinct unnorm_keys, got {keys}: rename all but one "
                           f"{' / '.join(dup)} collection with `vla-forget demos ... --out DIR --resume --name NEW_NAME` "
                           "(it rewrites the dataset from its saved episodes, collecting nothing)")
    if name in keys:
        raise DatasetError(f"the mixture's name {name!r} clashes with a dataset's unnorm_key")
    for what, attr in (("image shapes", "image_shape"), ("state sizes", "state_dim")):
        if len({getattr(d, attr) for d in datasets}) > 1:
            raise DatasetError(f"datasets with different {what} cannot share a batch: "
                               + ", ".join(f"{d.root}: {getattr(d, attr)}" for d in datasets))
    return MixedDataset(datasets, np.asarray(weights), statistics, name)
