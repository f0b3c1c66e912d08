"""LMAECompleter on the torch backend: invariants, batching order, tiling, bad inputs."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lmae_sdk import LMAE, make_config
from lmae_sdk.checkpoint import make_checkpoint, save_checkpoint
from lmae_sdk.labels import InputError, write_label

MODEL = (64, 96)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    m = LMAE(make_config("tiny", 5, img_size=MODEL))
    save_checkpoint(make_checkpoint(m, class_names=list("abcde"), palette=None, mask_ratios=[0.25, 0.5, 0.75],
                                    label_resize="soft", unknown_threshold=0.5), path)
    return path


@pytest.fixture(scope="module")
def completer(ckpt):
    from lmae_sdk import LMAECompleter

    return LMAECompleter.load(ckpt, backend="auto", threads=1)


def _pair(rng, h, w, holes=3):
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    lab = rng.integers(0, 5, (h, w)).astype(np.uint8)
    for _ in range(holes):
        y, x = rng.integers(0, h), rng.integers(0, w)
        lab[y: y + rng.integers(1, h), x: x + rng.integers(1, w)] = 255
    return img, lab


def test_lazy_top_level_import(completer):
    from lmae_sdk import LMAECompleter

    assert isinstance(completer, LMAECompleter)
    assert completer.backend_name == "torch" and completer.mask_ratios == [0.25, 0.5, 0.75]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(8, 160), w=st.integers(8, 200), seed=st.integers(0, 2**31 - 1),
       holes=st.integers(0, 6), noise=st.floats(0.0, 0.9), tile=st.booleans())
def test_known_pixels_never_change(completer, h, w, seed, holes, noise, tile):
    rng = np.random.default_rng(seed)
    img, lab = _pair(rng, h, w, holes)
    lab[rng.random((h, w)) < noise] = 255  # scattered unknown pixels on top of the blocks
    r = completer.complete(img, lab, tile=tile)
    known = lab != 255
    assert r.label.shape == lab.shape and r.label.dtype == np.uint8
    assert (r.label[known] == lab[known]).all()
    assert (r.label != 255).all() and (r.label < 5).all()
    assert (r.confidence[known] == 1.0).all()
    assert ((r.confidence > 0) & (r.confidence <= 1.0 + 1e-6)).all()
    assert r.filled == int((~known).sum())


def test_batch_keeps_order_across_engines(completer):
    rng = np.random.default_rng(3)
    pairs = []
    for i in range(14):  # different sizes and unknown amounts -> different engines and passes
        h, w = int(rng.integers(30, 130)), int(rng.integers(30, 170))
        img, lab = _pair(rng, h, w, holes=0)
        frac = [0.0, 0.1, 0.4, 0.7, 0.97][i % 5]
        lab[: int(frac * h)] = 255
        pairs.append((img, lab))
    singles = [completer.complete(img, lab) for img, lab in pairs]
    batch = list(completer.complete_batch(iter(pairs), batch_size=3, workers=2, chunk_size=5))
    assert len(batch) == len(pairs)
    assert len({r.mask_ratio for r in batch}) >= 2  # several engines were really used
    assert any(r.passes > 1 for r in batch)
    for (img, lab), a, b in zip(pairs, singles, batch):
        assert b.label.shape == lab.shape
        assert a.mask_ratio == b.mask_ratio
        agree = (a.label == b.label).mean()
        assert agree > 0.999  # batched vs single: float noise only


def test_lanes_take_one_engine_call_of_images_at_a_time(completer, monkeypatch):
    """A lane takes as many images as its engine runs per call (one on ONNX Runtime's CPU
    provider), so that the lanes end within one call of each other instead of one core
    idling through the last chunk; ``chunk_size`` overrides it."""
    import lmae_sdk.runtime.completer as completer_module

    sizes = []

    class Pool(completer_module.ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            sizes.append(len(args[0]))
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(completer_module, "ThreadPoolExecutor", Pool)
    rng = np.random.default_rng(9)
    pairs = [(*_pair(rng, 40, 60), f"p{i}") for i in range(7)]
    for engine in completer.engines.values():
        monkeypatch.setattr(engine.backend, "images_per_call", 1)
    names = [r.name for r in completer.complete_batch(pairs, batch_size=4, lanes=2)]
    assert names == [f"p{i}" for i in range(7)] and sizes == [1] * 7
    sizes.clear()
    list(completer.complete_batch(pairs, batch_size=4, lanes=2, chunk_size=3))
    assert sizes == [3, 3, 1]
    sizes.clear()
    for engine in completer.engines.values():  # a whole batch per call (a GPU): a batch per lane
        monkeypatch.setattr(engine.backend, "images_per_call", 0)
    list(completer.complete_batch(pairs, batch_size=4, lanes=2))
    assert sizes == [4, 3]


def test_lanes_keep_order_and_match_one_lane(completer):
    """Batches completed side by side come back in input order, with one lane's results;
    a bad input in a lane is reported in place and on_result sees every good result."""
    rng = np.random.default_rng(8)
    pairs = []
    for i in range(11):
        h, w = int(rng.integers(30, 130)), int(rng.integers(30, 170))
        img, lab = _pair(rng, h, w, holes=0)
        lab[: int([0.0, 0.3, 0.7, 0.97][i % 4] * h)] = 255
        pairs.append((img, lab, f"p{i}"))
    pairs[5] = (pairs[5][0], pairs[5][1][:, :-1], "p5")  # size mismatch
    one = list(completer.complete_batch(pairs, batch_size=2, on_error="return"))
    seen = []
    many = list(completer.complete_batch(iter(pairs), batch_size=2, on_error="return", lanes=3,
                                         on_result=lambda r: seen.append(r.name)))
    assert [r.name for r in many] == [f"p{i}" for i in range(11)]
    assert [r.ok for r in many] == [i != 5 for i in range(11)] and "differs" in str(many[5].error)
    assert sorted(seen) == sorted(f"p{i}" for i in range(11) if i != 5)
    assert len({r.mask_ratio for r in many if r.ok}) >= 2
    for a, b in zip(one, many):
        if a.ok:
            assert a.mask_ratio == b.mask_ratio and a.passes == b.passes
            assert (a.label == b.label).mean() > 0.999
    with pytest.raises(InputError):
        list(completer.complete_batch(pairs, batch_size=2, lanes=2))
    with pytest.raises(ValueError, match="lanes"):
        list(completer.complete_batch(pairs, lanes=0))


def test_min_confidence_leaves_unreliable_unknown(completer):
    rng = np.random.default_rng(4)
    img, lab = _pair(rng, 64, 96)
    r = completer.complete(img, lab, min_confidence=0.99)  # an untrained model is unsure
    hole = lab == 255
    assert r.unreliable > 0 and r.unreliable + r.filled == hole.sum()
    assert (r.label == 255).sum() == r.unreliable
    assert (r.confidence[(r.label == 255)] < 0.99).all()
    assert (r.label[~hole] == lab[~hole]).all()


def test_tiling_on_image_four_times_model_size(completer):
    rng = np.random.default_rng(5)
    H, W = 4 * MODEL[0], 4 * MODEL[1]
    img, lab = _pair(rng, H, W, holes=4)
    r = completer.complete(img, lab, tile=True)
    boxes = completer._pipeline().windows((H, W), True, 1.0)
    assert r.tiles == len(boxes) and r.tiles >= 16
    cover = np.zeros((H, W), int)
    for y0, y1, x0, x1 in boxes:
        assert (y1 - y0, x1 - x0) == MODEL
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1 and cover.max() > 1  # covered, overlapping
    assert (r.label[lab != 255] == lab[lab != 255]).all() and (r.label != 255).all()
    # a whole unknown window still gets filled
    lab2 = lab.copy()
    lab2[:80, :120] = 255
    r2 = completer.complete(img, lab2, tile=True)
    assert (r2.label != 255).all()
    # tile_scale: larger windows -> fewer tiles
    assert completer.complete(img, lab, tile=True, tile_scale=2.0).tiles < r.tiles


def test_bad_inputs_raise_or_are_reported(completer, tmp_path):
    rng = np.random.default_rng(6)
    img, lab = _pair(rng, 40, 50)
    with pytest.raises(InputError, match="differs"):
        completer.complete(img, lab[:, :-1])
    bad = lab.copy()
    bad[0, 0] = 7
    with pytest.raises(InputError, match="class ids"):
        completer.complete(img, bad)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(rgb)
    with pytest.raises(InputError, match="RGB"):
        completer.complete(img, rgb)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.zeros((40, 50), np.uint16)).save(deep)
    with pytest.raises(InputError, match="16"):
        completer.complete(img, deep)
    ok = tmp_path / "ok.png"
    write_label(ok, lab)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(ok.read_bytes()[:60])
    with pytest.raises(InputError, match="truncated"):
        completer.complete(img, trunc)
    with pytest.raises(InputError, match="not found"):
        completer.complete(tmp_path / "missing.jpg", ok)
    # in a batch with on_error="return": reported in place, the rest completes
    pairs = [(img, lab), (img, lab[:, :-1]), (img, bad), (img, rgb), (img, ok)]
    rs = list(completer.complete_batch(pairs, batch_size=2, on_error="return"))
    assert [r.ok for r in rs] == [True, False, False, False, True]
    assert "differs" in str(rs[1].error) and "class ids" in str(rs[2].error) and "rgb.png" in str(rs[3].error)
    with pytest.raises(InputError):
        list(completer.complete_batch(pairs, batch_size=2))
    # on_result runs on the workers for the good results only; its failure is that image's error
    seen = []

    def hand_on(r):
        if len(seen) == 1:
            raise OSError("disk full")
        seen.append(r.label.copy())

    rs = list(completer.complete_batch(pairs, batch_size=2, on_error="return", on_result=hand_on, workers=1))
    assert [r.ok for r in rs] == [True, False, False, False, False] and "disk full" in str(rs[4].error)
    np.testing.assert_array_equal(seen[0], rs[0].label)
    with pytest.raises(OSError, match="disk full"):
        list(completer.complete_batch(pairs[:1], batch_size=2, on_result=lambda r: hand_on(r)))


@pytest.mark.parametrize("tile", [False, True])
def test_geodesic_model_propagates_once_and_fusion_copies_along_image_edges(tmp_path, tile, monkeypatch):
    from lmae_sdk import LMAECompleter
    from lmae_sdk.fusion import FUSION_FEATURES, PixelFusion
    from lmae_sdk.propagation import geodesic_nearest
    from lmae_sdk.runtime import image_pipeline

    torch.manual_seed(0)
    m = LMAE(make_config("tiny", 5, img_size=MODEL, prior_mode="geodesic"))
    ck = make_checkpoint(m, class_names=list("abcde"), palette=None, mask_ratios=[0.5], label_resize="soft",
                         unknown_threshold=0.5)
    # a pixel fusion that scores only "is_nearest": every hole pixel copies the propagated label
    pick = np.zeros((len(FUSION_FEATURES), 1), np.float32)
    pick[FUSION_FEATURES.index("is_nearest")] = 1.0
    ck["fusion"] = PixelFusion([(pick, np.zeros(1))], np.zeros(5), min_log_prob=-1e9).to_dict()
    save_checkpoint(ck, tmp_path / "geo.pt")
    c = LMAECompleter.load(tmp_path / "geo.pt", backend="torch", threads=1)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (72, 100, 3)).astype(np.uint8)
    img[:, 50:] += 150  # a strong edge at column 50
    lab = np.full((72, 100), 255, np.uint8)
    lab[:, :44] = 1
    lab[:, 70:] = 3
    lab[:20, 20:30] = 255
    calls = []
    real = image_pipeline.propagate_for
    monkeypatch.setattr(image_pipeline, "propagate_for", lambda cfg, *a, **k: calls.append(cfg.prior_mode) or
                        real(cfg, *a, **k))
    r = c.complete(img, lab, tile=tile, tile_scale=0.6)
    assert calls == ["geodesic"]  # the whole image propagated once, in the model's mode
    np.testing.assert_array_equal(r.label, geodesic_nearest(img, lab, edge_weight=c.cfg.geodesic_edge_weight,
                                                            blur_sigma=c.cfg.geodesic_blur))
    assert (r.label[:, 50:70] == 3).all()


def test_allocator_settings_respect_the_users_choice(monkeypatch):
    import platform
    import sys

    from lmae_sdk.runtime import allocator

    monkeypatch.setenv("LMAE_MALLOC_DEFAULTS", "1")
    assert allocator._apply(32 << 20, 256 << 20, 64 << 20) is False
    monkeypatch.delenv("LMAE_MALLOC_DEFAULTS")
    monkeypatch.setenv("MALLOC_TOP_PAD_", "1048576")
    assert allocator._apply(32 << 20, 256 << 20, 64 << 20) is False
    monkeypatch.delenv("MALLOC_TOP_PAD_")
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert allocator._apply(32 << 20, 256 << 20, 64 << 20) is glibc


def test_library_calls_leave_malloc_alone_and_the_cli_opts_in(completer, monkeypatch, tmp_path):
    """complete / complete_batch never change process-wide malloc settings; `lmae complete`
    opts in for its own process (keep_freed_memory)."""
    from click.testing import CliRunner

    from lmae_sdk.cli import main as lmae
    from lmae_sdk.runtime import allocator

    calls = []
    monkeypatch.setattr(allocator, "_apply", lambda *a: calls.append(a) or True)
    monkeypatch.setattr(allocator, "_state", {})
    rng = np.random.default_rng(3)
    pairs = [_pair(rng, 40, 60) for _ in range(3)]
    completer.complete(*pairs[0])
    list(completer.complete_batch(pairs, batch_size=2))
    list(completer.complete_batch(pairs, batch_size=2, lanes=2))
    assert calls == []
    imgs, labs = tmp_path / "i", tmp_path / "l"
    imgs.mkdir()
    labs.mkdir()
    for i, (img, lab) in enumerate(pairs):
        Image.fromarray(img).save(imgs / f"p{i}.png")
        write_label(labs / f"p{i}.png", lab)
    r = CliRunner().invoke(lmae, ["complete", "--model", str(completer.source), "--images", str(imgs),
                                  "--labels", str(labs), "--out", str(tmp_path / "o"), "--quiet", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert len(calls) == 1


def test_torch_backend_leaves_torch_threads_alone_and_the_cli_sets_its_own(ckpt, tmp_path):
    """Loading and running a completer on the torch backend with threads=1 never changes
    torch's process-wide thread count; `lmae complete --backend torch --threads N` sets it
    for its own process."""
    from click.testing import CliRunner

    from lmae_sdk import LMAECompleter
    from lmae_sdk.cli import main as lmae

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        c = LMAECompleter.load(ckpt, backend="torch", threads=1)
        assert c.backend_name == "torch"
        pair = _pair(np.random.default_rng(4), 40, 60)
        c.complete(*pair)
        assert torch.get_num_threads() == 2
        imgs, labs = tmp_path / "i", tmp_path / "l"
        imgs.mkdir()
        labs.mkdir()
        Image.fromarray(pair[0]).save(imgs / "p.png")
        write_label(labs / "p.png", pair[1])
        r = CliRunner().invoke(lmae, ["complete", "--model", str(ckpt), "--images", str(imgs), "--labels", str(labs),
                                      "--out", str(tmp_path / "o"), "--backend", "torch", "--quiet",
                                      "--threads", "1", "--lanes", "1"])
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1  # the command's own process (CliRunner runs it in this one)
    finally:
        torch.set_num_threads(before)
