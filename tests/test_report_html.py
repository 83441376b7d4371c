"""report.html: a real bench (fake tasks, tiny policies, real mp4s) written as HTML, checked by parsing it and by
loading it in headless Chromium (Debian's ``chromium``, installed by ``make setup``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from tests.fakes import patch_fake_rollouts
from vla_forget.bench import BenchConfig, run_bench
from vla_forget.policies.small_vla import SmallVLA
from vla_forget.report_html import REPORT_HTML, write_html

TINY = dict(image_size=32, conv_channels=(8, 16), residual_stages=1, image_grid=2, state_dim=16, d_model=32,
            n_layers=1, context_layers=1, heads=2, ff_mult=2, text_layers=1, text_tokens=2, max_instruction_bytes=32)


class Page(HTMLParser):
    """The elements the tests look at: every tag with its attributes, in order, and the text."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path):
    page = Page()
    page.feed(open(path, encoding="utf-8").read())
    return page


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    mp = pytest.MonkeyPatch()
    patch_fake_rollouts(mp, tmp)
    battery = tmp / "fake-v1.yaml"
    battery.write_text("id: fake\nversion: 1\nepisodes: 3\nseed_start: 10\ntasks: [FakeA-v1, FakeB-v1]\n")
    target = tmp / "fake-target-v1.yaml"
    target.write_text("id: fake-target\nversion: 1\ntask: FakeTarget-v1\nepisodes: 3\nseed_start: 500\n")
    base, other = str(tmp / "base"), str(tmp / "adapted")
    SmallVLA.random_init(seed=0, **TINY).save(base)
    SmallVLA.random_init(seed=1, **TINY).save(other)
    cfg = BenchConfig(policies=[base, other], base=base, out=str(tmp / "run"), battery=str(battery),
                      target=str(target), workers=0, image_size=16, videos_per_task=2, kl_states_per_task=4,
                      kl_samples_per_state=1, progress=False)
    res = run_bench(cfg, log=lambda *_: None)
    yield res, cfg.out
    mp.undo()


def test_the_bench_writes_a_self_contained_report(bench):
    res, out = bench
    page = parse(os.path.join(out, REPORT_HTML))
    tags = page.tags
    # nothing from the network: every src and href is a file of the run folder or an anchor
    refs = [a.get("src") or a.get("href") for _, a in tags if a.get("src") or a.get("href")]
    assert refs and all(not r.startswith(("http:", "https:", "//", "/")) for r in refs)
    for r in refs:
        assert r.startswith("#") or os.path.exists(os.path.join(out, r)), r
    assert [t for t, _ in tags].count("link") == 0 and any(t == "style" for t, _ in tags)
    # the tables: success (one row per policy), forgetting and gain, divergences
    text = " ".join(page.text)
    for heading in ("Success at the end of the episode", "Forgetting and gain", "Action-distribution divergence"):
        assert heading in text
    assert sum(1 for t, a in tags if t == "td" and "hsl(" in a.get("style", "")) >= 2 * 3  # coloured success cells


def test_the_gallery_puts_each_seed_side_by_side_base_first(bench):
    res, out = bench
    page = parse(os.path.join(out, REPORT_HTML))
    figs = [a for t, a in page.tags if t == "figure"]
    videos = [a for t, a in page.tags if t == "video"]
    with open(os.path.join(out, "episodes.jsonl")) as f:
        eps = [json.loads(line) for line in f]
    with_video = [e for e in eps if e.get("video")]
    assert len(with_video) == 2 * 3 * 2 == len(videos) == len(figs)  # 2 policies x 3 tasks x 2 seeds
    base = res["base"]
    # figures come in rows of one seed: base, then the adapted policy
    assert [f["data-policy"] for f in figs] == [base, res["policies"][1]["id"]] * 6
    for f, v in zip(figs, videos):
        assert f["data-outcome"] in ("success", "fail")
        assert os.path.exists(os.path.join(out, v["src"])) and os.path.exists(os.path.join(out, v["poster"]))
    outcome = {(e["policy"], e["task"], e["seed"]): e["success_at_end"] for e in with_video}
    assert sorted(f["data-outcome"] == "success" for f in figs) == sorted(outcome.values())
    assert {a.get("value") for t, a in page.tags if t == "input" and a.get("name") == "outcome"} == {"all", "success", "fail"}


def test_text_from_the_run_is_escaped_and_missing_videos_are_said(bench, tmp_path):
    res, out = bench
    run = tmp_path / "copy"
    shutil.copytree(out, run)
    with open(run / "episodes.jsonl") as f:
        eps = [json.loads(line) for line in f]
    eps[0]["instruction"] = "<script>alert(1)</script> & more"
    first = next(e for e in eps if e.get("video"))
    first["video"] = "gone.mp4"
    with open(run / "episodes.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in eps)
    page_text = open(write_html(res, str(run / REPORT_HTML), str(run)), encoding="utf-8").read()
    assert "<script>alert(1)" not in page_text
    assert "missing: videos/" in page_text and "gone.mp4" in page_text
    # a run without videos says how to get them
    for e in eps:
        e["video"] = None
    with open(run / "episodes.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in eps)
    assert "--videos-per-task N" in open(write_html(res, str(run / REPORT_HTML), str(run)), encoding="utf-8").read()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args, timeout=120):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           "--allow-file-access-from-files", "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make setup installs it)")
def test_chromium_loads_the_page_and_decodes_every_video(bench, tmp_path):
    res, out = bench
    url = "file://" + os.path.abspath(os.path.join(out, REPORT_HTML))
    dom = chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Page()
    page.feed(dom.stdout)
    body = next(a for t, a in page.tags if t == "body")
    # the page's own script counts the videos the browser decoded (their first frame loaded) and those it could not
    assert body.get("data-videos-failed") == "0" and body.get("data-videos-loaded") == "12", body
    assert [a.get("data-state") for t, a in page.tags if t == "video"] == ["loaded"] * 12
    shot = tmp_path / "report.png"
    r = chromium("--window-size=1280,1600", f"--screenshot={shot}", url)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    import imageio.v2 as imageio

    img = imageio.imread(shot)
    assert img.shape[:2] == (1600, 1280) and float(np.asarray(img, float).std()) > 10  # drawn, not blank


def test_a_review_size_outside_its_range_is_refused_before_any_work(tmp_path):
    from vla_forget.bench import BenchError

    for bad in (10, 2048, -1):
        cfg = BenchConfig(policies=["zero-v1"], base="zero-v1", out=str(tmp_path / f"r{bad}"), review_size=bad,
                          progress=False)
        with pytest.raises(BenchError, match=r"--review-size must be 0 .* or 64\.\.1024 pixels"):
            run_bench(cfg, log=lambda *_: None)
        assert not (tmp_path / f"r{bad}").exists()
